"""Latency, throughput and peak memory of a RegionProxy model next to the
straightforward implementation of the same model (README, "Speed and
memory", says what each path is and how it is measured).

    python tools/analysis/benchmark.py CONFIG [CHECKPOINT] [--shape H W]
        [--batch N] [--iters N] [--warmup N] [--dtypes float32 bfloat16]
        [--train] [--glibc-defaults] [--with-cp] [--compile]

``--compile`` times ours compiled (``torch.compile(mode='reduce-overhead')``,
CUDA graphs on a GPU) against ours eager, instead of the straightforward path.

``tools/analysis/head_memory.py`` measures the head alone.
"""
import argparse
import copy
import inspect
import json
import os
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
from regproxy.engine import (CheckpointError, load_segmentor_checkpoint,
                             trusted_checkpoints)
from regproxy.models.backbones import RegionProxyViT
from regproxy.models.utils import standalone_model_cfg
from regproxy.utils import (DTYPES, add_shape_arg, add_trust_checkpoint_arg,
                            fail, keep_freed_memory)
from regproxy.utils.compiled_inference import (CPU_COMPILE_NOTE,
                                               compile_inference)
from regproxy.utils.profiling import (autocast, cpu_has_bf16,
                                      peak_in_subprocess, peak_memory,
                                      print_comparison, print_peak,
                                      time_steps)

PATHS = ('ours', 'straightforward')
MEMORY_STEPS = 2
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
    """Segmentor of ``path`` (``ours``, ``straightforward`` or ``compiled``:
    ours with a compiled ``encode_decode``) with PyTorch's default
    initialisation: the paths get the same weights by copying, so no
    pretrained file is read."""
    model_cfg = standalone_model_cfg(cfg.model)
    if path == 'straightforward':
        model_cfg = straightforward_cfg(model_cfg)
    model = MODELS.build(model_cfg).to(device)
    if path == 'compiled':
        compile_inference(model)
    return model


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


def run_worker(args: argparse.Namespace, cfg: Config) -> None:
    """Subprocess body: build one case, print its peak memory."""
    spec = json.loads(args.worker)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(cfg, spec['path'], device)
    batch = args.batch if spec['mode'] == 'infer' else args.train_batch
    inputs = make_inputs(batch, tuple(args.shape), device)
    make_step = inference_step if spec['mode'] == 'infer' else train_step
    step = make_step(model, inputs, device, DTYPES[spec['dtype']])
    if spec['path'] == 'compiled':
        step()  # compiles; the compiler's memory is not the model's
    print_peak(peak_memory(step, MEMORY_STEPS, device))


def worker_peak(args: argparse.Namespace, spec: dict) -> int:
    """Peak memory of the case ``spec`` in a fresh interpreter."""
    return peak_in_subprocess([
        os.path.abspath(__file__), args.config, '--batch', str(args.batch),
        '--train-batch', str(args.train_batch), '--device', args.device,
        '--shape', *map(str, args.shape), '--worker', json.dumps(spec)
    ] + (['--with-cp'] if args.with_cp else []))


def benchmark_models(args: argparse.Namespace, cfg: Config) -> List[dict]:
    """Check that both paths agree, then time and measure each case."""
    device = torch.device(args.device)
    shape = tuple(args.shape)
    torch.manual_seed(0)
    # Timed pairs: ours first, then the reference.
    paths = ('compiled', 'ours') if args.compile else PATHS
    models = {path: build_model(cfg, path, device) for path in paths}
    if args.checkpoint:
        with trusted_checkpoints(args.trust_checkpoint):
            load_segmentor_checkpoint(models['ours'], args.checkpoint)
    # Same weights: the names of plain ViTs are mmseg's (strict load).
    other = paths[0] if args.compile else paths[1]
    models[other].load_state_dict(models['ours'].state_dict())
    start = time.perf_counter()
    diff, scale = compare_logits(models,
                                 make_inputs(args.batch, shape, device),
                                 device)
    if args.compile:
        print(f'compiled (first call) in {time.perf_counter() - start:.1f} s')
    print(f'float32 logits, {paths[0]} vs {paths[1]}: max |diff| '
          f'{diff:.3g} (max |logit| {scale:.3g})')
    if diff > 1e-4 * max(scale, 1.):
        raise RuntimeError('the two paths disagree; timings would compare '
                           'different models')
    rows = []
    for mode in ['infer'] + (['train'] if args.train else []):
        batch = args.batch if mode == 'infer' else args.train_batch
        inputs = make_inputs(batch, shape, device)
        make_step = inference_step if mode == 'infer' else train_step
        for dtype in args.dtypes:
            steps = {
                path: make_step(model, inputs, device, DTYPES[dtype])
                for path, model in models.items()
            }
            times = time_steps(steps, args.iters, args.warmup, device)
            for path in paths:
                spec = dict(path=path, mode=mode, dtype=dtype)
                rows.append(dict(spec, case=f'{shape[0]}x{shape[1]}',
                                 batch=batch, times=times[path],
                                 peak=worker_peak(args, spec)))
            print(f'  done: {mode} {dtype}', flush=True)
    return rows


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='speed and peak memory, ours vs the straightforward path')
    parser.add_argument('config')
    parser.add_argument('checkpoint', nargs='?', help='weights of ours')
    add_shape_arg(parser)
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
        '--glibc-defaults', action='store_true',
        help='time with glibc malloc as it comes (default on the CPU: keep '
        'freed memory for reuse, as train.py and test.py do)')
    parser.add_argument(
        '--with-cp', action='store_true',
        help='activation checkpointing in both backbones (with_cp)')
    parser.add_argument(
        '--compile', action='store_true',
        help="time ours under torch.compile(mode='reduce-overhead') (CUDA "
        'graphs on a GPU) against ours eager; off by default, as it gives '
        'no gain on the CPU')
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
    args = parse_args(argv)
    register_all_modules()
    cfg = Config.fromfile(args.config)
    if args.with_cp:
        cfg.model.backbone.with_cp = True
    args.shape = list(args.shape or cfg.get('crop_size', (512, 512)))
    if args.worker:
        run_worker(args, cfg)
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
    if args.device == 'cpu' and args.compile:
        print(f'note: {CPU_COMPILE_NOTE}')
    print(f'input {args.batch}x3x{args.shape[0]}x{args.shape[1]}'
          f' (training: batch {args.train_batch})')
    try:
        rows = benchmark_models(args, cfg)
    except CheckpointError as error:
        fail(str(error))
    print_comparison(rows, 'input')


if __name__ == '__main__':
    main()
