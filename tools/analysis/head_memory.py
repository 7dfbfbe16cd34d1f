"""Peak memory and speed of ``ProxyHead`` alone: accumulating the 9
neighbouring regions one at a time (ours) vs materialising them with
``F.unfold`` (the reference form), on random token maps of the config's head.

    python tools/analysis/head_memory.py CONFIG [--shape H W] [--train]
        [--batch N] [--iters N] [--dtypes float32 bfloat16]

Without ``--shape`` the token grids of 512x512, 640x640 and 512x2048 (H x W)
images are measured; ``--train`` adds forward + backward. Timing and memory
are measured as by ``benchmark.py`` (``regproxy.utils.profiling``).
"""
import argparse
import copy
import json
import os
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

import regproxy  # noqa: F401 registers the RegionProxy modules
from regproxy.models.utils import sync_bn_to_bn
from regproxy.utils import DTYPES, add_shape_arg
from regproxy.utils.profiling import (autocast, peak_in_subprocess,
                                      peak_memory, print_comparison,
                                      print_peak, time_steps)

PATHS = ('accumulated', 'unfold')
# Image sizes (H, W) whose token grids are measured by default.
HEAD_INPUTS = ((512, 512), (640, 640), (512, 2048))
MEMORY_STEPS = 2
Step = Callable[[], None]


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


def run_worker(args: argparse.Namespace) -> None:
    """Subprocess body: build one case, print its peak memory."""
    spec = json.loads(args.worker)
    device = torch.device(args.device)
    torch.manual_seed(0)
    head = build_head(Config.fromfile(args.config), spec['path'] == 'unfold',
                      device)
    step = head_step(head, tuple(spec['grid']), args.batch, spec['mode'],
                     device, DTYPES[spec['dtype']])
    print_peak(peak_memory(step, MEMORY_STEPS, device))


def benchmark_heads(args: argparse.Namespace, cfg: Config) -> List[dict]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    heads = {path: build_head(cfg, path == 'unfold', device)
             for path in PATHS}
    heads['unfold'].load_state_dict(heads['accumulated'].state_dict())
    head = heads['accumulated']
    print(f'ProxyHead: C={head.in_channels}, K={head.num_classes}, '
          f'region_res={head.region_res}, batch {args.batch}')
    rows = []
    for shape in [tuple(args.shape)] if args.shape else HEAD_INPUTS:
        grid = token_grid(cfg, shape)
        for mode in ['infer'] + (['train'] if args.train else []):
            for dtype in args.dtypes:
                steps = {
                    path: head_step(h, grid, args.batch, mode, device,
                                    DTYPES[dtype])
                    for path, h in heads.items()
                }
                times = time_steps(steps, args.iters, args.warmup, device)
                for path in PATHS:
                    spec = dict(path=path, mode=mode, dtype=dtype, grid=grid)
                    peak = peak_in_subprocess([
                        os.path.abspath(__file__), args.config, '--batch',
                        str(args.batch), '--device', args.device,
                        '--worker', json.dumps(spec)])
                    rows.append(dict(spec, case=f'{grid[0]}x{grid[1]}',
                                     batch=args.batch, times=times[path],
                                     peak=peak))
    return rows


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='ProxyHead alone: accumulated vs unfold form')
    parser.add_argument('config')
    add_shape_arg(
        parser, 'image size whose token grid is measured (default: '
        f'{", ".join(f"{h}x{w}" for h, w in HEAD_INPUTS)})')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--iters', type=int, default=20,
                        help='timed calls per form')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--dtypes', nargs='+', choices=list(DTYPES),
                        default=['float32'])
    parser.add_argument('--train', action='store_true',
                        help='also forward + backward')
    parser.add_argument(
        '--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == 'cpu' and 'float16' in args.dtypes:
        parser.error('float16 autocast is for CUDA; use bfloat16 on the CPU')
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    register_all_modules()
    if args.worker:
        run_worker(args)
        return
    print_comparison(benchmark_heads(args, Config.fromfile(args.config)),
                     'token grid')


if __name__ == '__main__':
    main()
