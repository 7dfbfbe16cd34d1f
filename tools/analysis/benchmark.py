"""Latency, throughput and peak memory of a RegionProxy model next to a
reference implementation of the same model, side by side in one run.

    python tools/analysis/benchmark.py CONFIG [CHECKPOINT] [--shape H W]
        [--batch N] [--train-batch N] [--iters N] [--warmup N]
        [--dtypes float32 bfloat16] [--train] [--with-cp]
        [--compile | --head-only | --frozen]

The two paths timed (ours first):

- by default, ours vs the straightforward path: mmseg's
  ``VisionTransformer`` with the same weights and ``ProxyHead`` in its
  unfold form with mmseg's loss;
- ``--compile``: ours compiled as by ``test.py --compile``
  (``torch.compile(mode='reduce-overhead')``, CUDA graphs on a GPU) vs ours
  eager;
- ``--head-only``: ``ProxyHead`` alone on random token maps, accumulating
  the 9 neighbouring regions (ours) vs materialising them with ``F.unfold``;
  without ``--shape``, at the token grids of 512x512, 640x640 and 512x2048
  images;
- ``--frozen``: training steps of ours with the whole backbone frozen
  (``frozen_stages`` = its number of layers: only the head trains) vs ours
  training in full.

Both paths first run one float32 input and must give the same logits. After
warm-up their steps alternate call by call, so load from other processes
hits both alike, and a speed-up is the median of the ratios of calls made
back to back. Peak memory is measured for each case in a fresh subprocess
(:func:`peak_memory`), so one path's freed or cached memory never hides the
other's.
"""
import argparse
import inspect
import json
import math
import os
import runpy
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.optim import OptimWrapper
from mmengine.structures import PixelData
from mmseg.models.backbones import VisionTransformer
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from mmseg.utils import register_all_modules

import regproxy  # noqa: F401 registers the RegionProxy modules
from regproxy.engine import (CheckpointError, load_segmentor_checkpoint,
                             trusted_checkpoints)
from regproxy.models.backbones import RegionProxyViT
from regproxy.utils import (DTYPES, add_shape_arg, add_trust_checkpoint_arg,
                            fail, standalone_model_cfg)

PATHS = ('ours', 'straightforward')
COMPILE_PATHS = ('compiled', 'ours')
HEAD_PATHS = ('accumulated', 'unfold')
FROZEN_PATHS = ('frozen', 'full')
# Image sizes (H, W) whose token grids --head-only measures by default.
HEAD_INPUTS = ((512, 512), (640, 640), (512, 2048))
MEMORY_STEPS = 2  # calls of a step during a peak-memory measurement
PEAK_PREFIX = 'PEAK_BYTES '  # how a memory worker reports its peak
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
    state_dict names match only for those. ``model_cfg`` is left as is."""
    cfg = standalone_model_cfg(model_cfg)
    # Settings left to RegionProxyViT's defaults must be spelled out: some
    # of mmseg's differ (final_norm, the LayerNorm eps, out_indices).
    backbone = {**_defaults(RegionProxyViT), **cfg['backbone']}
    if (MODELS.get(backbone['type']) is not RegionProxyViT
            or backbone['deit'] or backbone['embed_type']):
        raise ValueError('the straightforward path (mmseg VisionTransformer) '
                         'exists for plain RegionProxyViT backbones only, not '
                         'for timm, DeiT or hybrid ones (--head-only times '
                         'the head of any)')
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
    cfg['decode_head']['fused_loss'] = False  # mmseg's loss_by_feat
    return cfg


def repo_script(name: str) -> dict:
    """The globals of the repository's script ``name``: the benchmark uses
    ``test.py``'s compiled inference and ``train.py``'s CPU check."""
    return runpy.run_path(str(Path(__file__).resolve().parents[2] / name))


def build_model(cfg: Config, path: str, device: torch.device) -> nn.Module:
    """The segmentor timed as ``path`` (one of :data:`PATHS`,
    :data:`COMPILE_PATHS`, :data:`HEAD_PATHS`, :data:`FROZEN_PATHS`;
    ``compiled``: ours with a compiled ``encode_decode``; ``frozen``: ours
    with the whole backbone frozen), with PyTorch's default initialisation:
    the two paths get the same weights by copying, so no pretrained file is
    read."""
    model_cfg = (straightforward_cfg(cfg.model) if path == 'straightforward'
                 else standalone_model_cfg(cfg.model))
    model = MODELS.build(model_cfg)
    if path == 'frozen':
        backbone = model.backbone
        model_cfg['backbone']['frozen_stages'] = getattr(
            backbone, 'num_layers', None) or len(backbone.layers)
        model = MODELS.build(model_cfg)
    model = model.to(device)
    if path == 'unfold':
        model.decode_head.use_unfold = True
    if path == 'compiled':
        repo_script('test.py')['compile_inference'](model)
    return model


def make_inputs(batch: int, shape: Tuple[int, int],
                device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, *shape, generator=generator).to(device)


def autocast(device: torch.device, dtype: torch.dtype):
    """Autocast to ``dtype``; a no-op for float32."""
    return torch.autocast(
        device.type, dtype=dtype, enabled=dtype != torch.float32)


def inference_step(model: nn.Module, images: torch.Tensor,
                   dtype: torch.dtype) -> Step:
    """One whole-image forward: backbone, head, resize to the input size."""
    model.eval()
    metas = [dict(img_shape=images.shape[2:])]

    def step():
        with torch.no_grad(), autocast(images.device, dtype):
            model.encode_decode(images, metas)

    return step


def train_step(model: nn.Module, images: torch.Tensor,
               dtype: torch.dtype) -> Step:
    """Loss on random labels, backward, AdamW step (the recipe's settings)."""
    model.train()
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(model.decode_head.num_classes,
                           (len(images), 1, *images.shape[2:]),
                           generator=generator).to(images.device)
    samples = [SegDataSample(gt_sem_seg=PixelData(data=y)) for y in labels]
    optim_wrapper = OptimWrapper(torch.optim.AdamW(
        model.parameters(), lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01))

    def step():
        with autocast(images.device, dtype):
            losses = model.loss(images, samples)
        optim_wrapper.update_params(model.parse_losses(losses)[0])

    return step


def head_step(model: nn.Module, images: torch.Tensor, mode: str,
              dtype: torch.dtype) -> Step:
    """The head alone, forward (``infer``) or forward + backward (``train``),
    on random (mid, last) token maps of the images' size."""
    head = model.decode_head
    head.train(mode == 'train')
    patch = model.backbone.patch_size
    grid = [-(-size // patch) for size in images.shape[2:]]
    generator = torch.Generator().manual_seed(0)
    maps = [
        torch.randn(len(images), c, *grid,
                    generator=generator).to(images.device)
        for c in head.in_channels
    ]

    def step():
        with torch.set_grad_enabled(mode == 'train'), autocast(
                images.device, dtype):
            out = head(maps)
        if mode == 'train':
            out.float().mean().backward()
            head.zero_grad(set_to_none=True)

    return step


def make_step(args: argparse.Namespace, model: nn.Module, mode: str,
              dtype: str, shape: Tuple[int, int]) -> Step:
    """The step of one case, on its random input."""
    batch = args.batch if mode == 'infer' else args.train_batch
    images = make_inputs(batch, shape, torch.device(args.device))
    if args.head_only:
        return head_step(model, images, mode, DTYPES[dtype])
    make = inference_step if mode == 'infer' else train_step
    return make(model, images, DTYPES[dtype])


def compare_logits(models: Dict[str, nn.Module],
                   images: torch.Tensor) -> Tuple[float, float]:
    """(max |difference|, max |logit|) of the two paths' float32 logits."""
    metas = [dict(img_shape=images.shape[2:])]
    with torch.no_grad():
        first, second = (model.eval().encode_decode(images, metas).float()
                         for model in models.values())
    return (first - second).abs().max().item(), first.abs().max().item()


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
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            steps[name]()
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def _status_bytes(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024  # the kernel reports kB
    raise RuntimeError(f'{field} missing from /proc/self/status')


def peak_memory(step: Step, steps: int, device: torch.device) -> int:
    """Peak bytes above the current use during ``steps`` calls of ``step``.

    CUDA: ``max_memory_allocated`` minus ``memory_allocated`` before (tensor
    bytes; the caching allocator's reserve is left out). CPU: the kernel's
    peak resident set size (``VmHWM``), reset to the current size through
    ``/proc/self/clear_refs`` right before the steps, minus ``VmRSS`` then;
    run it in :func:`worker_peak`'s process, whose fixed mmap threshold makes
    RSS follow the live tensor bytes.
    """
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        for _ in range(steps):
            step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # resets VmHWM to the current RSS
    # read after the reset: memory freed in between would make it negative
    base = _status_bytes('VmRSS')
    for _ in range(steps):
        step()
    return _status_bytes('VmHWM') - base


def run_worker(args: argparse.Namespace, cfg: Config) -> None:
    """Subprocess body: build one case, print its peak memory."""
    spec = json.loads(args.worker)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(cfg, spec['path'], device)
    step = make_step(args, model, spec['mode'], spec['dtype'],
                     args.shapes[0])
    if spec['path'] == 'compiled':
        step()  # compiles; the compiler's memory is not the model's
    print(PEAK_PREFIX + str(peak_memory(step, MEMORY_STEPS, device)),
          flush=True)


def worker_peak(argv: Sequence[str], spec: dict,
                shape: Tuple[int, int]) -> int:
    """Peak memory of the case ``spec`` at ``shape``, measured by this
    script (command line ``argv``) in a fresh interpreter.

    glibc's malloc keeps freed blocks below its adaptive mmap threshold (up
    to 32 MiB) in its heap, which makes RSS depend on allocation history; the
    worker's threshold is fixed at 128 KiB, so every tensor above it is
    mapped on allocation and unmapped when freed.
    """
    command = [
        sys.executable, os.path.abspath(__file__), *argv, '--shape',
        *map(str, shape), '--worker', json.dumps(spec)
    ]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(128 * 1024))
    result = subprocess.run(command, env=env, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0 or PEAK_PREFIX not in result.stdout:
        raise RuntimeError(f'memory worker {spec} failed:\n{result.stderr}')
    return int(result.stdout.rsplit(PEAK_PREFIX, 1)[1])


def benchmark_models(args: argparse.Namespace, cfg: Config,
                     argv: Sequence[str]) -> List[dict]:
    """Check that both paths agree, then time and measure each case."""
    device = torch.device(args.device)
    paths = (HEAD_PATHS if args.head_only else
             COMPILE_PATHS if args.compile else
             FROZEN_PATHS if args.frozen else PATHS)
    torch.manual_seed(0)
    models = {path: build_model(cfg, path, device) for path in paths}
    ours, other = models.values()
    if args.head_only:
        head = ours.decode_head
        print(f'ProxyHead: C={head.in_channels}, K={head.num_classes}, '
              f'region_res={head.region_res}')
    if args.checkpoint:
        with trusted_checkpoints(args.trust_checkpoint):
            load_segmentor_checkpoint(ours, args.checkpoint)
    # Same weights: the names of plain ViTs are mmseg's (strict load).
    other.load_state_dict(ours.state_dict())
    start = time.perf_counter()
    diff, scale = compare_logits(
        models, make_inputs(args.batch, args.shapes[0], device))
    if args.compile:
        print(f'compiled (first call) in {time.perf_counter() - start:.1f} s')
    print(f'float32 logits, {paths[0]} vs {paths[1]}: max |diff| '
          f'{diff:.3g} (max |logit| {scale:.3g})')
    if not (math.isfinite(diff) and math.isfinite(scale)):
        weights = args.checkpoint or 'the random initial weights'
        fail(f'{args.config}: the float32 logits hold NaN or inf with '
             f'{weights}: check the weights for non-finite values')
    if not diff <= 1e-4 * max(scale, 1.):
        fail('the two paths disagree; timings would compare different models')
    rows = []
    for shape in args.shapes:
        # a frozen backbone infers as a trained one: training steps only
        modes = ((['infer'] if not args.frozen else []) +
                 (['train'] if args.train or args.frozen else []))
        for mode in modes:
            for dtype in args.dtypes:
                steps = {
                    path: make_step(args, model, mode, dtype, shape)
                    for path, model in models.items()
                }
                times = time_steps(steps, args.iters, args.warmup, device)
                batch = args.batch if mode == 'infer' else args.train_batch
                for path in paths:
                    spec = dict(path=path, mode=mode, dtype=dtype)
                    peak = worker_peak(argv, spec, shape)
                    rows.append(dict(spec, case=f'{shape[0]}x{shape[1]}',
                                     batch=batch, times=times[path],
                                     peak=peak))
                print(f'  done: {shape[0]}x{shape[1]} {mode} {dtype}',
                      flush=True)
    return rows


def print_comparison(rows: List[dict]) -> None:
    """Print latency (median and fastest call), FPS and peak memory of every
    row (``case``, ``mode``, ``dtype``, ``path``, ``times``, ``batch``,
    ``peak``; rows in pairs: ours, then the reference); then per pair the
    speed-up, the median over calls i of reference_i / ours_i, and the
    memory ratio."""
    print(f'\n{"input":<12} {"mode":<6} {"dtype":<9} {"path":<16} '
          f'{"latency (ms)":>12} {"min (ms)":>9} {"FPS":>8} '
          f'{"peak (MiB)":>11}')
    for row in rows:
        latency = statistics.median(row['times'])
        print(f'{row["case"]:<12} {row["mode"]:<6} {row["dtype"]:<9} '
              f'{row["path"]:<16} {latency * 1e3:>12.1f} '
              f'{min(row["times"]) * 1e3:>9.1f} '
              f'{row["batch"] / latency:>8.2f} {row["peak"] / MiB:>11.1f}')
    print('\nreference / ours (speed-up; peak-memory ratio):')
    for ours, ref in zip(rows[::2], rows[1::2]):
        speedup = statistics.median(
            r / o for r, o in zip(ref['times'], ours['times']))
        print(f'{ours["case"]:<12} {ours["mode"]:<6} {ours["dtype"]:<9} '
              f'speed x{speedup:.2f}  '
              f'memory x{ref["peak"] / max(ours["peak"], 1):.2f}')


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='speed and peak memory, ours vs a reference path')
    parser.add_argument('config')
    parser.add_argument('checkpoint', nargs='?', help='weights of ours')
    add_shape_arg(
        parser, 'input image size (default: the crop size of the config; '
        'with --head-only: ' +
        ', '.join(f'{h}x{w}' for h, w in HEAD_INPUTS) + ')')
    parser.add_argument('--batch', type=int, default=1,
                        help='images per inference forward')
    parser.add_argument('--train-batch', type=int, default=2,
                        help='images per training step (the recipe: 2)')
    parser.add_argument('--iters', type=int, default=20,
                        help='timed calls per path')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--dtypes', nargs='+', choices=list(DTYPES),
                        default=['float32', 'bfloat16'])
    parser.add_argument('--train', action='store_true',
                        help='also time a training step')
    parser.add_argument(
        '--with-cp', action='store_true',
        help='activation checkpointing in both backbones (with_cp)')
    paths = parser.add_mutually_exclusive_group()
    paths.add_argument(
        '--compile', action='store_true',
        help="time ours under torch.compile(mode='reduce-overhead') (CUDA "
        'graphs on a GPU) against ours eager; off by default, as it gives '
        'no gain on the CPU')
    paths.add_argument(
        '--head-only', action='store_true',
        help='time ProxyHead alone, accumulated against unfold form')
    paths.add_argument(
        '--frozen', action='store_true',
        help='time training steps with the whole backbone frozen (only the '
        'head trains) against training in full')
    parser.add_argument(
        '--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    add_trust_checkpoint_arg(parser)
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == 'cpu' and 'float16' in args.dtypes:
        parser.error('float16 autocast is for CUDA; use bfloat16 on the CPU')
    if args.compile and args.train:
        parser.error('--compile times inference only; drop --train')
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    register_all_modules()
    cfg = Config.fromfile(args.config)
    if args.with_cp:
        cfg.model.backbone.with_cp = True
    args.shapes = ([tuple(args.shape)] if args.shape else
                   HEAD_INPUTS if args.head_only else
                   [tuple(cfg.get('crop_size', (512, 512)))])
    if args.worker:
        run_worker(args, cfg)
        return
    print(f'{os.path.basename(args.config)} on {args.device} '
          f'({torch.get_num_threads()} threads), torch {torch.__version__}')
    if (args.device == 'cpu' and 'bfloat16' in args.dtypes
            and not repo_script('train.py')['cpu_has_bf16']()):
        print('note: this CPU has no bfloat16 instructions; bfloat16 '
              'autocast is emulated and slower than float32 here')
    if args.device == 'cpu' and args.compile:
        print(f'note: {repo_script("test.py")["CPU_COMPILE_NOTE"]}')
    print(f'batch {args.batch} (training: batch {args.train_batch})')
    try:
        rows = benchmark_models(args, cfg, argv)
    except CheckpointError as error:
        fail(str(error))
    except ValueError as error:  # a config the reference cannot mirror
        fail(f'{args.config}: {error}')
    print_comparison(rows)


if __name__ == '__main__':
    main()
