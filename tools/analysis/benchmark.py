"""Latency, throughput and peak memory of RegionProxy next to the
straightforward implementation of the same model.

    python tools/analysis/benchmark.py CONFIG [CHECKPOINT] [--shape H W]
        [--batch N] [--iters N] [--warmup N] [--dtypes float32 bfloat16]
        [--train]
    python tools/analysis/benchmark.py CONFIG --head-memory [--train]

Two segmentors with the same weights run side by side:

- ``ours``: the config's model, ``RegionProxyViT`` (attention through
  ``F.scaled_dot_product_attention``) and ``ProxyHead`` accumulating the 9
  neighbouring regions one at a time;
- ``straightforward``: mmseg's ``VisionTransformer`` (mmcv's
  ``MultiheadAttention`` around ``nn.MultiheadAttention``, which builds the
  attention matrix) with the same settings, and ``ProxyHead(use_unfold=True)``,
  which materialises the 9·K·h·w neighbour logits.

Before anything is timed both paths run on one input in float32 and the
largest logit difference is printed. Inference is ``encode_decode`` on one
whole image (backbone, head, bilinear resize to the input size); a training
step (``--train``) is the segmentor's ``loss`` on random labels, backward and
an AdamW step. Reduced precision is autocast (bfloat16 on the CPU, float16 or
bfloat16 on CUDA).

Timing: after warm-up the paths alternate call by call, so load from other
processes hits both alike. On the CPU both are timed with freed memory kept
for reuse, as train.py and test.py run (``regproxy.utils.keep_freed_memory``);
``--glibc-defaults`` times them with glibc's allocator as it comes. The table gives the median and the fastest of
``--iters`` calls; the speed-up is the median of the ratios of calls made
back to back. On a CPU without bfloat16 instructions (``avx512_bf16``,
``amx_bf16``) bfloat16 autocast is emulated and slower than float32; a note
says so.

Peak memory is the growth over what the model, its inputs and the optimizer
object hold before the first step, during ``MEMORY_STEPS`` steps (so a
training step's peak includes gradients and AdamW's state). Each (path, mode,
dtype) runs in a fresh subprocess, so one path's freed or cached memory never
hides the other's.

- CUDA: ``torch.cuda.max_memory_allocated`` minus ``memory_allocated`` before
  the steps (tensor bytes; the caching allocator's reserve is left out).
- CPU: torch has no ``max_memory_allocated`` for host memory and
  ``tracemalloc`` does not see its allocations, so the kernel's count is used:
  the peak resident set size (``VmHWM`` in ``/proc/self/status``) is reset to
  the current size by writing ``5`` to ``/proc/self/clear_refs`` right before
  the steps, and the peak is ``VmHWM`` afterwards minus ``VmRSS`` before.
  glibc's malloc would keep freed blocks below its adaptive mmap threshold
  (up to 32 MiB) in its heap, which makes RSS depend on allocation history;
  the subprocess fixes the threshold at 128 KiB (``MALLOC_MMAP_THRESHOLD_``),
  so every tensor above that is mapped on allocation and unmapped when freed,
  and RSS follows the live tensor bytes.

``--head-memory`` measures the ``ProxyHead`` of the config alone, accumulated
vs unfold form, on random token maps of 512x512, 640x640 and 512x2048 (H x W)
images (or of ``--shape``), in the same way: forward, and with ``--train``
forward and backward.
"""
import argparse
import copy
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.structures import PixelData
from mmseg.models.backbones import VisionTransformer
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from mmseg.utils import register_all_modules

import regproxy  # noqa: F401 registers the RegionProxy modules
from regproxy.engine import load_segmentor_checkpoint
from regproxy.models.backbones import RegionProxyViT
from regproxy.models.utils import standalone_model_cfg, sync_bn_to_bn
from regproxy.utils import keep_freed_memory

PATHS = ('ours', 'straightforward')
DTYPES = {
    'float32': torch.float32,
    'bfloat16': torch.bfloat16,
    'float16': torch.float16
}
# Image sizes (H, W) whose token grids ``--head-memory`` measures.
HEAD_INPUTS = ((512, 512), (640, 640), (512, 2048))
MEMORY_STEPS = 2
PEAK_PREFIX = 'PEAK_BYTES '
MiB = 2**20
Step = Callable[[], None]


def _defaults(cls: type) -> Dict[str, object]:
    return {
        name: param.default
        for name, param in inspect.signature(cls).parameters.items()
        if param.default is not inspect.Parameter.empty
    }


def straightforward_cfg(model_cfg: dict) -> dict:
    """The segmentor config of the straightforward path: mmseg's
    ``VisionTransformer`` with the same settings, ``ProxyHead`` in its unfold
    form. Plain ViTs only: mmseg's has no DeiT token nor hybrid stem, so the
    state_dict names match only for those."""
    cfg = copy.deepcopy(model_cfg)
    # Settings left to RegionProxyViT's defaults must be spelled out: some
    # of mmseg's differ (final_norm, the LayerNorm eps, out_indices).
    backbone = {**_defaults(RegionProxyViT), **cfg['backbone']}
    if backbone['deit'] or backbone['embed_type']:
        raise ValueError('the straightforward path (mmseg VisionTransformer) '
                         'exists for plain ViTs only, not for DeiT or hybrid '
                         'backbones')
    if backbone['mlp_ratio'] * backbone['embed_dims'] % 1:
        raise ValueError('mmseg VisionTransformer needs an integer MLP width')
    out_indices = backbone['out_indices']
    if -1 in (out_indices if isinstance(out_indices, Sequence) else
              (out_indices, )):
        raise ValueError('mmseg VisionTransformer reads out_indices=-1 as the '
                         'last layer, not the embedding')
    accepted = _defaults(VisionTransformer)
    cfg['backbone'] = {k: v for k, v in backbone.items() if k in accepted}
    # Both patch embeddings are bias-free (mmseg's patch_bias=False).
    cfg['backbone'].update(
        type='mmseg.VisionTransformer',
        # mmseg multiplies without int(): a float ratio gives a float width.
        mlp_ratio=int(backbone['mlp_ratio']))
    cfg['decode_head']['use_unfold'] = True
    return cfg


def build_model(cfg: Config, path: str, device: torch.device) -> nn.Module:
    """Segmentor of ``path`` (``ours`` or ``straightforward``) with
    PyTorch's default initialisation: the paths get the same weights by
    copying, so no pretrained file is read."""
    model_cfg = standalone_model_cfg(cfg.model)
    if path == 'straightforward':
        model_cfg = straightforward_cfg(model_cfg)
    return MODELS.build(model_cfg).to(device)


def autocast(device: torch.device, dtype: torch.dtype):
    return torch.autocast(
        device.type, dtype=dtype, enabled=dtype != torch.float32)


def synchronize(device: torch.device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def make_inputs(batch: int, shape: Tuple[int, int],
                device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, *shape, generator=generator).to(device)


def image_metas(batch: int, shape: Tuple[int, int]) -> List[dict]:
    return [
        dict(img_shape=shape, ori_shape=shape, pad_shape=shape,
             padding_size=[0, 0, 0, 0]) for _ in range(batch)
    ]


def inference_step(model: nn.Module, inputs: torch.Tensor,
                   device: torch.device, dtype: torch.dtype) -> Step:
    """One whole-image forward: backbone, head, resize to the input size."""
    model.eval()
    metas = image_metas(inputs.shape[0], tuple(inputs.shape[2:]))

    def step():
        with torch.no_grad(), autocast(device, dtype):
            model.encode_decode(inputs, metas)

    return step


def train_step(model: nn.Module, inputs: torch.Tensor, device: torch.device,
               dtype: torch.dtype) -> Step:
    """Loss on random labels, backward, AdamW step (the recipe's settings)."""
    model.train()
    shape = tuple(inputs.shape[2:])
    generator = torch.Generator().manual_seed(0)
    samples = []
    for meta in image_metas(inputs.shape[0], shape):
        sample = SegDataSample(metainfo=meta)
        labels = torch.randint(
            model.decode_head.num_classes, (1, *shape), generator=generator)
        sample.gt_sem_seg = PixelData(data=labels.to(device))
        samples.append(sample)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01)

    def step():
        with autocast(device, dtype):
            losses = model.loss(inputs, samples)
        loss, _ = model.parse_losses(losses)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def head_step(head: nn.Module, grid: Tuple[int, int], batch: int, mode: str,
              device: torch.device, dtype: torch.dtype) -> Step:
    """ProxyHead forward (``infer``) or forward + backward (``train``) on
    random (mid, last) token maps of ``grid``."""
    generator = torch.Generator().manual_seed(0)
    inputs = [
        torch.randn(batch, c, *grid, generator=generator).to(device)
        for c in head.in_channels
    ]
    head.train(mode == 'train')

    def step():
        with torch.set_grad_enabled(mode == 'train'), autocast(device, dtype):
            out = head(inputs)
        if mode == 'train':
            out.float().mean().backward()
            head.zero_grad(set_to_none=True)

    return step


def build_head(cfg: Config, use_unfold: bool,
               device: torch.device) -> nn.Module:
    head_cfg = sync_bn_to_bn(copy.deepcopy(cfg.model.decode_head))
    head_cfg['use_unfold'] = use_unfold
    return MODELS.build(head_cfg).to(device)


def token_grid(cfg: Config, shape: Tuple[int, int]) -> Tuple[int, int]:
    patch = cfg.model.backbone.get('patch_size', 16)
    return -(-shape[0] // patch), -(-shape[1] // patch)


def time_steps(steps: Dict[str, Step], iters: int, warmup: int,
               device: torch.device) -> Dict[str, List[float]]:
    """Seconds of each of ``iters`` calls of every step. The steps alternate
    call by call (in turn reversed order), so call i of every step ran at
    nearly the same time and under the same load from other processes."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in steps}
    names = list(steps)
    for i in range(iters):
        for name in names if i % 2 == 0 else reversed(names):
            synchronize(device)
            start = time.perf_counter()
            steps[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def _status_bytes(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024  # the kernel reports kB
    raise RuntimeError(f'{field} missing from /proc/self/status')


def peak_memory(step: Step, steps: int, device: torch.device) -> int:
    """Peak bytes above the current use during ``steps`` calls of ``step``
    (see the module docstring for the method)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        for _ in range(steps):
            step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    base = _status_bytes('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # resets VmHWM to the current RSS
    for _ in range(steps):
        step()
    return _status_bytes('VmHWM') - base


def cpu_has_bf16() -> bool:
    """Whether the CPU has bfloat16 instructions (AVX512-BF16 or AMX);
    without them bfloat16 kernels convert to float32 and back in software."""
    with open('/proc/cpuinfo') as f:
        flags = set(f.read().split())
    return bool(flags & {'avx512_bf16', 'amx_bf16'})


def run_worker(args: argparse.Namespace):
    """Subprocess body: build one case, print its peak memory."""
    spec = json.loads(args.worker)
    cfg = Config.fromfile(args.config)
    device = torch.device(args.device)
    dtype = DTYPES[spec['dtype']]
    torch.manual_seed(0)
    if spec['kind'] == 'head':
        head = build_head(cfg, spec['path'] == 'straightforward', device)
        step = head_step(head, tuple(spec['grid']), args.batch, spec['mode'],
                         device, dtype)
    else:
        model = build_model(cfg, spec['path'], device)
        batch = args.batch if spec['mode'] == 'infer' else args.train_batch
        inputs = make_inputs(batch, tuple(args.shape), device)
        make_step = inference_step if spec['mode'] == 'infer' else train_step
        step = make_step(model, inputs, device, dtype)
    print(PEAK_PREFIX + str(peak_memory(step, MEMORY_STEPS, device)))


def measure_in_subprocess(args: argparse.Namespace, spec: dict) -> int:
    """Run ``run_worker`` for ``spec`` in a fresh interpreter."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__), args.config, '--batch',
        str(args.batch), '--train-batch',
        str(args.train_batch), '--device', args.device, '--worker',
        json.dumps(spec)
    ] + (['--shape', *map(str, args.shape)] if args.shape else [])
    # A fixed mmap threshold returns every freed tensor to the kernel, so
    # RSS tracks live memory (module docstring).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(128 * 1024))
    result = subprocess.run(
        cmd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f'memory worker {spec} failed:\n{result.stderr}')
    lines = [
        line for line in result.stdout.splitlines()
        if line.startswith(PEAK_PREFIX)
    ]
    return int(lines[-1][len(PEAK_PREFIX):])


def compare_logits(models: Dict[str, nn.Module], inputs: torch.Tensor,
                   device: torch.device) -> Tuple[float, float]:
    """(max |difference|, max |logit|) of the two paths' float32 logits."""
    metas = image_metas(inputs.shape[0], tuple(inputs.shape[2:]))
    logits = []
    for model in models.values():
        model.eval()
        with torch.no_grad():
            logits.append(model.encode_decode(inputs, metas).float())
    diff = (logits[0] - logits[1]).abs().max().item()
    return diff, logits[0].abs().max().item()


def measure_pair(args: argparse.Namespace, steps: Dict[str, Step],
                 spec: dict, case: str, batch: int) -> List[dict]:
    """Time both paths' ``steps`` side by side, then measure each one's
    peak memory in a subprocess (``spec`` names the case there)."""
    times = time_steps(steps, args.iters, args.warmup,
                       torch.device(args.device))
    rows = []
    for path in PATHS:
        latency = statistics.median(times[path])
        rows.append(
            dict(case=case, mode=spec['mode'], dtype=spec['dtype'],
                 path=path, times=times[path], latency=latency,
                 fps=batch / latency,
                 peak=measure_in_subprocess(args, dict(spec, path=path))))
    return rows


def print_table(rows: List[dict], case_label: str):
    """Latency (median and fastest call), FPS (from the median) and peak
    memory of every row; then per case the speed-up, the median over calls
    i of straightforward_i / ours_i (made back to back), and the memory
    ratio."""
    print(f'\n{case_label:<12} {"mode":<6} {"dtype":<9} {"path":<16} '
          f'{"latency (ms)":>12} {"min (ms)":>9} {"FPS":>8} '
          f'{"peak (MiB)":>11}')
    for row in rows:
        print(f'{row["case"]:<12} {row["mode"]:<6} {row["dtype"]:<9} '
              f'{row["path"]:<16} {row["latency"] * 1e3:>12.1f} '
              f'{min(row["times"]) * 1e3:>9.1f} {row["fps"]:>8.2f} '
              f'{row["peak"] / MiB:>11.1f}')
    print('\nstraightforward / ours (speed-up; peak-memory ratio):')
    for ours, ref in zip(rows[::2], rows[1::2]):
        speedup = statistics.median(
            r / o for r, o in zip(ref['times'], ours['times']))
        print(f'{ours["case"]:<12} {ours["mode"]:<6} {ours["dtype"]:<9} '
              f'speed x{speedup:.2f}  '
              f'memory x{ref["peak"] / max(ours["peak"], 1):.2f}')


def benchmark_models(args: argparse.Namespace, cfg: Config) -> List[dict]:
    device = torch.device(args.device)
    shape = tuple(args.shape)
    torch.manual_seed(0)
    models = {path: build_model(cfg, path, device) for path in PATHS}
    if args.checkpoint:
        load_segmentor_checkpoint(models['ours'], args.checkpoint)
    # Same weights: the names of plain ViTs are mmseg's (strict load).
    models['straightforward'].load_state_dict(models['ours'].state_dict())
    diff, scale = compare_logits(models,
                                 make_inputs(args.batch, shape, device),
                                 device)
    print(f'float32 logits, ours vs straightforward: max |diff| {diff:.3g} '
          f'(max |logit| {scale:.3g})')
    if diff > 1e-4 * max(scale, 1.):
        raise RuntimeError('the two paths disagree; timings would compare '
                           'different models')

    rows = []
    for mode in ['infer'] + (['train'] if args.train else []):
        batch = args.batch if mode == 'infer' else args.train_batch
        inputs = make_inputs(batch, shape, device)
        make_step = inference_step if mode == 'infer' else train_step
        for dtype_name in args.dtypes:
            steps = {
                path: make_step(model, inputs, device, DTYPES[dtype_name])
                for path, model in models.items()
            }
            spec = dict(kind='model', mode=mode, dtype=dtype_name)
            rows += measure_pair(args, steps, spec,
                                 f'{shape[0]}x{shape[1]}', batch)
            print(f'  done: {mode} {dtype_name}', flush=True)
    return rows


def benchmark_heads(args: argparse.Namespace, cfg: Config) -> List[dict]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    heads = {
        path: build_head(cfg, path == 'straightforward', device)
        for path in PATHS
    }
    heads['straightforward'].load_state_dict(heads['ours'].state_dict())
    head = heads['ours']
    print(f'ProxyHead: C={head.in_channels}, K={head.num_classes}, '
          f'region_res={head.region_res}, batch {args.batch}; '
          f'ours = accumulated, straightforward = unfold')
    rows = []
    for shape in [tuple(args.shape)] if args.shape else HEAD_INPUTS:
        grid = token_grid(cfg, shape)
        for mode in ['infer'] + (['train'] if args.train else []):
            for dtype_name in args.dtypes:
                steps = {
                    path: head_step(h, grid, args.batch, mode, device,
                                    DTYPES[dtype_name])
                    for path, h in heads.items()
                }
                spec = dict(kind='head', mode=mode, dtype=dtype_name,
                            grid=grid)
                rows += measure_pair(args, steps, spec,
                                     f'{grid[0]}x{grid[1]}', args.batch)
    return rows


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='speed and peak memory, ours vs the straightforward path')
    parser.add_argument('config')
    parser.add_argument('checkpoint', nargs='?', help='weights of ours')
    parser.add_argument(
        '--shape', type=int, nargs=2, metavar=('H', 'W'), default=None,
        help='input size (default: the crop size of the config; with '
        '--head-memory: the sizes listed there)')
    parser.add_argument('--batch', type=int, default=1,
                        help='images per inference forward')
    parser.add_argument('--train-batch', type=int, default=2,
                        help='images per training step (the recipe: 2)')
    parser.add_argument('--iters', type=int, default=20,
                        help='timed calls per path')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument(
        '--dtypes', nargs='+', choices=sorted(DTYPES),
        default=['float32', 'bfloat16'])
    parser.add_argument('--train', action='store_true',
                        help='also time a training step')
    parser.add_argument(
        '--glibc-defaults', action='store_true',
        help='time with glibc malloc as it comes (default on the CPU: keep '
        'freed memory for reuse, as train.py and test.py do)')
    parser.add_argument(
        '--head-memory', action='store_true',
        help='ProxyHead alone, accumulated vs unfold, on the grids of '
        f'{", ".join(f"{h}x{w}" for h, w in HEAD_INPUTS)} images')
    parser.add_argument(
        '--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == 'cpu' and 'float16' in args.dtypes:
        parser.error('float16 autocast is for CUDA; use bfloat16 on the CPU')
    return args


def main(argv: Optional[Sequence[str]] = None):
    args = parse_args(argv)
    register_all_modules()
    cfg = Config.fromfile(args.config)
    if args.shape is None and not args.head_memory:
        args.shape = list(cfg.get('crop_size', (512, 512)))
    if args.worker:
        run_worker(args)
        return
    reuse = (args.device == 'cpu' and not args.glibc_defaults
             and keep_freed_memory())
    print(f'{os.path.basename(args.config)} on {args.device} '
          f'({torch.get_num_threads()} threads), torch {torch.__version__}'
          + (', freed memory kept for reuse' if reuse else ''))
    if (args.device == 'cpu' and 'bfloat16' in args.dtypes
            and not cpu_has_bf16()):
        print('note: this CPU has no bfloat16 instructions; bfloat16 '
              'autocast is emulated and slower than float32 here')
    if args.head_memory:
        print_table(benchmark_heads(args, cfg), 'token grid')
    else:
        print(f'input {args.batch}x3x{args.shape[0]}x{args.shape[1]}'
              f' (training: batch {args.train_batch})')
        print_table(benchmark_models(args, cfg), 'input')


if __name__ == '__main__':
    main()
