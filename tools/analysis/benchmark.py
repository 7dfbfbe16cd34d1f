"""Latency, throughput and peak memory of a RegionProxy model next to other
implementations, side by side in one run, on the machine it prints.

    python tools/analysis/benchmark.py CONFIG [CHECKPOINT] [--shape H W]
        [--dtypes float32 bfloat16] [--train] [--with-cp]
        [--compile | --frozen | --class-maps] [--cfg-options KEY=VALUE ...]

What each mode times and how is in docs/speed.md (``--frozen``:
docs/frozen_backbones.md).
"""
import argparse
import copy
import inspect
import os
import runpy
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config, DictAction
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
                            config_errors, fail, load_config)

# The paths each mode times, ours first; the first two get the same weights.
PATHS = ('ours', 'straightforward', 'segmenter')
COMPILE_PATHS = ('compiled', 'ours')
FROZEN_PATHS = ('frozen', 'full')
CLASS_MAP_PATHS = ('class_maps', 'logits')  # test_cfg.return_logits
# The CPU flags that decide float32 and bfloat16 speed here.
CPU_FLAGS = ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16')
MEMORY_STEPS = 2  # calls of a step during a peak-memory measurement
PEAK_PREFIX = 'PEAK_BYTES '  # how a memory worker reports its peak
Step = Callable[[], None]


def _defaults(cls: type) -> Dict[str, object]:
    return {
        name: param.default
        for name, param in inspect.signature(cls).parameters.items()
        if param.default is not inspect.Parameter.empty
    }


def standalone_model_cfg(model_cfg: dict) -> dict:
    """A copy of a segmentor config that reads no weights file
    (``pretrained`` and the backbone's ``init_cfg`` cleared: the benchmark
    loads a checkpoint or keeps random weights). SyncBN stays: torch's
    ``SyncBatchNorm`` is plain batch norm without a process group."""
    cfg = copy.deepcopy(model_cfg)
    cfg['pretrained'] = None
    cfg['backbone'].update(pretrained=None, init_cfg=None)
    return cfg


def straightforward_cfg(model_cfg: dict) -> dict:
    """The segmentor config of the straightforward path: mmseg's
    ``VisionTransformer`` with the same settings, ``ProxyHead`` in its unfold
    form. Plain ViTs only: mmseg's has no DeiT token nor hybrid stem, so the
    weights of ours fit it only for those (:func:`benchmark_models` checks).
    ``model_cfg`` is left as is."""
    cfg = standalone_model_cfg(model_cfg)
    # Settings left to RegionProxyViT's defaults must be spelled out: some
    # of mmseg's differ (final_norm, the LayerNorm eps, out_indices).
    backbone = {**_defaults(RegionProxyViT), **cfg['backbone']}
    indices = backbone['out_indices']
    if -1 in (indices if isinstance(indices, Sequence) else (indices, )):
        raise ValueError('mmseg VisionTransformer reads out_indices=-1 as '
                         'the last layer, not the embedding')
    accepted = _defaults(VisionTransformer)
    cfg['backbone'] = {k: v for k, v in backbone.items() if k in accepted}
    # Both patch embeddings are bias-free (mmseg's patch_bias=False).
    cfg['backbone'].update(
        type='mmseg.VisionTransformer',
        # mmseg multiplies without int(): a float ratio gives a float width
        # (a non-integer one then fails the weight check).
        mlp_ratio=int(backbone['mlp_ratio']))
    cfg['decode_head']['use_unfold'] = True
    cfg['decode_head']['fused_loss'] = False  # mmseg's loss_by_feat
    return cfg


def segmenter_cfg(model_cfg: dict) -> dict:
    """The segmentor config of the peer, mmseg's Segmenter (Strudel et al.,
    ICCV 2021) as in its configs/segmenter: the straightforward path's
    ``VisionTransformer`` (width, depth, patch, image size) and a 2-layer
    ``SegmenterMaskTransformerHead`` of the same width on its last layer."""
    cfg = straightforward_cfg(model_cfg)
    backbone, head = cfg['backbone'], cfg['decode_head']
    backbone['out_indices'] = backbone['num_layers'] - 1
    width = backbone['embed_dims']
    cfg['type'] = 'mmseg.EncoderDecoder'
    cfg['decode_head'] = dict(
        type='mmseg.SegmenterMaskTransformerHead', in_channels=width,
        channels=width, embed_dims=width, num_heads=backbone['num_heads'],
        num_layers=2, dropout_ratio=0.0, num_classes=head['num_classes'],
        loss_decode=head['loss_decode'])
    return cfg


def repo_script(name: str) -> dict:
    """The globals of the repository's script ``name`` (``test.py``)."""
    return runpy.run_path(str(Path(__file__).resolve().parents[2] / name))


def build_model(cfg: Config, path: str, device: torch.device) -> nn.Module:
    """The segmentor timed as ``path`` (one of :data:`PATHS`,
    :data:`COMPILE_PATHS`, :data:`FROZEN_PATHS`, :data:`CLASS_MAP_PATHS`),
    with PyTorch's default initialisation: no pretrained file is read."""
    model_cfg = {'straightforward': straightforward_cfg,
                 'segmenter': segmenter_cfg}.get(
                     path, standalone_model_cfg)(cfg.model)
    if path in CLASS_MAP_PATHS:
        model_cfg['test_cfg'] = dict(model_cfg.get('test_cfg') or {},
                                     return_logits=path == 'logits')
    model = MODELS.build(model_cfg)
    if path == 'frozen':
        backbone = model.backbone
        model_cfg['backbone']['frozen_stages'] = getattr(
            backbone, 'num_layers', None) or len(backbone.layers)
        model = MODELS.build(model_cfg)
    model = model.to(device)
    if path == 'compiled':
        repo_script('test.py')['compile_inference'](model)
    return model


def make_inputs(batch: int, shape: Tuple[int, int],
                device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, *shape, generator=generator).to(device)


def make_step(args: argparse.Namespace, model: nn.Module, mode: str,
              dtype: str) -> Step:
    """The step of one case on its random input, under autocast to
    ``dtype`` (none for float32). ``infer``: one whole-image forward
    (backbone, head, resize to the input size); ``predict``: ``predict()``
    in the config's test mode (whole or slide); ``train``: the loss on
    random labels, backward and an AdamW step (the recipe's settings)."""
    device = torch.device(args.device)
    images = make_inputs(args.train_batch if mode == 'train' else args.batch,
                         args.shape, device)
    cast = partial(torch.autocast, device.type, dtype=DTYPES[dtype],
                   enabled=dtype != 'float32')
    model.train(mode == 'train')
    if mode == 'predict':

        def step():
            with torch.no_grad(), cast():
                model.predict(images)

        return step
    if mode == 'infer':
        metas = [dict(img_shape=args.shape)]

        def step():
            with torch.no_grad(), cast():
                model.encode_decode(images, metas)

        return step
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(model.decode_head.num_classes,
                           (len(images), 1, *args.shape),
                           generator=generator).to(device)
    samples = [SegDataSample(gt_sem_seg=PixelData(data=y)) for y in labels]
    optim_wrapper = OptimWrapper(torch.optim.AdamW(
        model.parameters(), lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01))

    def step():
        with cast():
            losses = model.loss(images, samples)
        optim_wrapper.update_params(model.parse_losses(losses)[0])

    return step


def compare_logits(models: Sequence[nn.Module],
                   images: torch.Tensor) -> Tuple[float, float]:
    """(max |difference|, max |logit|) of two models' float32 logits."""
    metas = [dict(img_shape=images.shape[2:])]
    with torch.no_grad():
        first, second = (model.eval().encode_decode(images, metas).float()
                         for model in models)
    return (first - second).abs().max().item(), first.abs().max().item()


def compare_class_maps(models: Sequence[nn.Module],
                       images: torch.Tensor) -> float:
    """The fraction of pixels where two models' float32 ``predict()``
    gives the same class."""
    with torch.no_grad():
        first, second = (torch.cat([
            sample.pred_sem_seg.data for sample in model.eval().predict(images)
        ]) for model in models)
    return (first == second).double().mean().item()


def time_steps(steps: Dict[Hashable, Step], iters: int, warmup: int,
               device: torch.device) -> Dict[Hashable, List[float]]:
    """Seconds of each of ``iters`` calls of every step. The steps alternate
    call by call (in turn reversed order), so call i of every step ran at
    nearly the same time and under the same load from other processes."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    sync = (torch.cuda.synchronize if device.type == 'cuda' else
            lambda device: None)
    times = {name: [] for name in steps}
    names = list(steps)
    for i in range(iters):
        for name in names if i % 2 == 0 else reversed(names):
            sync(device)
            start = time.perf_counter()
            steps[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def _status_bytes(field: str) -> int:
    with open('/proc/self/status') as f:
        status = dict(line.split(':', 1) for line in f)
    return int(status[field].split()[0]) * 1024  # the kernel reports kB


def peak_memory(step: Step, steps: int, device: torch.device) -> int:
    """Peak bytes above the current use during ``steps`` calls of ``step``:
    CUDA's peak allocated tensor bytes, or the CPU's peak resident set size
    (in :func:`worker_peak`'s process; how: docs/speed.md)."""
    if device.type == 'cuda':  # the allocator counts as kernels are queued
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        for _ in range(steps):
            step()
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
    path, mode, dtype = args.worker.split(',')
    device = torch.device(args.device)
    model = build_model(cfg, path, device)
    step = make_step(args, model, mode, dtype)
    if path == 'compiled':
        step()  # compiles; the compiler's memory is not the model's
    print(PEAK_PREFIX + str(peak_memory(step, MEMORY_STEPS, device)),
          flush=True)


def worker_peak(argv: Sequence[str], spec: str) -> int:
    """Peak memory of the case ``spec`` (``path,mode,dtype``), measured by
    this script (command line ``argv``) in a fresh interpreter whose glibc
    mmap threshold is fixed at 128 KiB: every tensor above it is mapped when
    allocated and unmapped when freed, so RSS follows the live tensors, not
    the history."""
    command = [sys.executable, os.path.abspath(__file__), *argv,
               '--worker', spec]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(128 * 1024))
    result = subprocess.run(command, env=env, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0 or PEAK_PREFIX not in result.stdout:
        raise RuntimeError(f'memory worker {spec} failed:\n{result.stderr}')
    return int(result.stdout.rsplit(PEAK_PREFIX, 1)[1])


def benchmark_models(args: argparse.Namespace, cfg: Config,
                     argv: Sequence[str]) -> List[dict]:
    """Check that ours and the next path agree, then time and measure each
    case: one result per input, mode and dtype, holding every path's call
    times and peak memory."""
    device = torch.device(args.device)
    paths = (COMPILE_PATHS if args.compile else
             FROZEN_PATHS if args.frozen else
             CLASS_MAP_PATHS if args.class_maps else PATHS)
    torch.manual_seed(0)
    # ValueError too: a config that mmseg's ViT cannot mirror
    with config_errors(cfg, 'the models'):
        models = {path: build_model(cfg, path, device) for path in paths}
    ours, other = list(models.values())[:2]
    if args.checkpoint:
        with trusted_checkpoints(args.trust_checkpoint):
            load_segmentor_checkpoint(ours, args.checkpoint)
    try:  # same weights: the names of plain ViTs are mmseg's
        other.load_state_dict(ours.state_dict())
    except RuntimeError as error:  # torch lists the keys and shapes
        fail(f'{args.config}: the weights of {paths[0]} do not fit '
             f'{paths[1]} (mmseg VisionTransformer: plain RegionProxyViT '
             f'backbones only, not timm, DeiT or hybrid ones): {error}')
    images = make_inputs(args.batch, args.shape, device)
    if args.class_maps:
        same = compare_class_maps((ours, other), images)
        print(f'float32 class maps, {paths[0]} vs {paths[1]}: {same:.2%} of '
              'the pixels equal')
        if same != 1:
            fail(f'{args.config}: predict() gives other class maps without '
                 f'the logits than with them on {1 - same:.2%} of the '
                 'pixels; return_logits=False must not change predictions')
    else:
        start = time.perf_counter()
        diff, scale = compare_logits((ours, other), images)
        if args.compile:
            print('compiled (first call) in '
                  f'{time.perf_counter() - start:.1f} s')
        print(f'float32 logits, {paths[0]} vs {paths[1]}: max |diff| '
              f'{diff:.3g} (max |logit| {scale:.3g})')
        if not diff <= 1e-4 * max(scale, 1.):  # NaN too
            weights = args.checkpoint or 'the random initial weights'
            fail(f'{args.config}: the float32 logits of the two paths '
                 f'disagree or are not finite with {weights}; timings would '
                 'compare different models')
    modes = (['train'] if args.frozen else  # it infers as a full backbone
             ['predict'] if args.class_maps else
             ['infer', 'train'] if args.train else ['infer'])
    results = []
    for mode in modes:
        # The dtypes alternate too: their ratios are back-to-back pairs.
        times = time_steps({(path, dtype): make_step(args, model, mode, dtype)
                            for dtype in args.dtypes
                            for path, model in models.items()},
                           args.iters, args.warmup, device)
        for dtype in args.dtypes:
            peaks = {path: worker_peak(argv, f'{path},{mode},{dtype}')
                     for path in paths}
            case = f'{args.shape[0]}x{args.shape[1]} {mode} {dtype}'
            print(f'  done: {case}', flush=True)
            results.append(dict(
                case=case, mode=mode, peaks=peaks,
                times={path: times[path, dtype] for path in paths},
                batch=args.train_batch if mode == 'train' else args.batch))
    return results


def _pair_ratio(times: List[float], base: List[float]) -> float:
    """The median over calls i of times_i / base_i (made back to back)."""
    return statistics.median(t / b for t, b in zip(times, base))


def print_comparison(results: List[dict]) -> None:
    """Print, for every path of every result of :func:`benchmark_models`,
    the median call, FPS and peak memory, and for all but the first path its
    time (:func:`_pair_ratio`) and peak over the first's; then, for the
    first path, each dtype's time over the first dtype's of its mode."""
    print(f'\n{"case":<24} {"path":<16} {"latency (ms)":>12} {"FPS":>8} '
          f'{"peak (MiB)":>11}  over the first: time, memory')
    for result in results:
        times, peaks = result['times'], result['peaks']
        first = next(iter(times))
        for path in times:
            latency = statistics.median(times[path])
            line = (f'{result["case"]:<24} {path:<16} {latency * 1e3:>12.1f} '
                    f'{result["batch"] / latency:>8.2f} '
                    f'{peaks[path] / 2**20:>11.1f}')
            if path != first:
                line += (f'  x{_pair_ratio(times[path], times[first]):.2f} '
                         f'time, x{peaks[path] / max(peaks[first], 1):.2f} '
                         'memory')
            print(line)
    for result in results:
        base = next(r for r in results if r['mode'] == result['mode'])
        if result is not base:
            path = next(iter(result['times']))
            ratio = _pair_ratio(base['times'][path], result['times'][path])
            print(f'{path}: {result["case"]} runs x{ratio:.2f} as fast as '
                  f'{base["case"].split()[-1]}')


def machine(device: torch.device) -> str:
    """The CPU's model name, family, model and which of :data:`CPU_FLAGS`
    it has, from Linux's /proc/cpuinfo (``torch.cpu.get_capabilities()``
    names no CPU model), the GPU, the torch version and its threads."""
    fields = {}
    with open('/proc/cpuinfo') as f:
        for line in f:
            key, _, value = line.partition(':')
            fields.setdefault(key.strip(), value.strip())
    flags = fields.get('flags', '').split()
    has = ', '.join(f'{flag} {"yes" if flag in flags else "no"}'
                    for flag in CPU_FLAGS)
    gpu = (f', GPU: {torch.cuda.get_device_name(device)}'
           if device.type == 'cuda' else '')
    kind = f'family {fields.get("cpu family")} model {fields.get("model")}'
    return (f'CPU: {fields.get("model name", "unknown")} ({kind}; {has})'
            f'{gpu}, torch {torch.__version__}, '
            f'{torch.get_num_threads()} threads')


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='speed and peak memory, ours vs other implementations')
    parser.add_argument('config')
    parser.add_argument('checkpoint', nargs='?', help='weights of ours')
    add_shape_arg(parser)
    parser.add_argument('--batch', type=int, default=1,
                        help='images per inference forward')
    parser.add_argument('--train-batch', type=int, default=2,
                        help='images per training step (the recipe: 2)')
    parser.add_argument('--iters', type=int, default=20, help='timed calls')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--dtypes', nargs='+', choices=list(DTYPES),
                        default=['float32', 'bfloat16'])
    parser.add_argument('--train', action='store_true',
                        help='also time a training step')
    parser.add_argument(
        '--with-cp', action='store_true',
        help='activation checkpointing in the backbones (with_cp)')
    paths = parser.add_mutually_exclusive_group()
    paths.add_argument(
        '--compile', action='store_true',
        help='time ours compiled as by test.py --compile against ours eager '
        '(no gain on the CPU)')
    paths.add_argument(
        '--frozen', action='store_true',
        help='time training steps with the whole backbone frozen (only the '
        'head trains) against training in full')
    paths.add_argument(
        '--class-maps', action='store_true',
        help="time predict() in the config's test mode returning class maps "
        'only (test_cfg.return_logits=False) against returning the logits')
    parser.add_argument(
        '--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='config overrides, e.g. model.test_cfg.mode=whole')
    add_trust_checkpoint_arg(parser)
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if (args.compile or args.class_maps) and args.train:
        parser.error('--compile and --class-maps time inference only; drop '
                     '--train')
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    register_all_modules()
    cfg = load_config(args.config, args.cfg_options)
    if args.with_cp:
        cfg.model.backbone.with_cp = True
    args.shape = tuple(args.shape or cfg.get('crop_size', (512, 512)))
    if args.worker:
        run_worker(args, cfg)
        return
    print(machine(torch.device(args.device)))
    if args.device == 'cpu' and args.compile:
        print(f'note: {repo_script("test.py")["CPU_COMPILE_NOTE"]}')
    print(f'{os.path.basename(args.config)}, batch {args.batch} (training: '
          f'batch {args.train_batch})')
    try:
        results = benchmark_models(args, cfg, argv)
    except CheckpointError as error:
        fail(str(error))
    print_comparison(results)


if __name__ == '__main__':
    main()
