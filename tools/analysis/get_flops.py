"""Parameters and FLOPs of a RegionProxy model.

    python tools/analysis/get_flops.py CONFIG [--shape H W]

FLOPs are multiply-adds counted once (the mmcv/mmseg convention) for one
image of H x W (default: the config's crop size). Two counts are printed:

- full: every convolution and matmul, attention's qkv/output projections and
  its QK^T and AV products included, and the head's 9-neighbour combination;
- paper: what the paper's table reports. Its counter did not see the
  attention blocks at all, so this count is the full one without them
  (MLPs, patch embedding or stem, and head).

The model is built on the ``meta`` device: shapes only, nothing allocated,
so the largest models are counted in seconds.
"""
import argparse
from collections import defaultdict
from typing import Dict, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

import regproxy  # noqa: F401 registers the RegionProxy modules
from regproxy.models.backbones.vit import SelfAttention
from regproxy.models.decode_heads import ProxyHead
from regproxy.models.decode_heads.proxy_head import NUM_NEIGHBOURS
from regproxy.utils import add_shape_arg, standalone_model_cfg


def _is_attention(name: str) -> bool:
    return '.attn.' in f'.{name}.'


def _is_timm_attention(module: nn.Module) -> bool:
    """timm's attention blocks (ViT ``Attention``, EVA's ``EvaAttention``):
    their QK^T and AV run in ``F.scaled_dot_product_attention``, which no
    module hook sees."""
    return (type(module).__module__.startswith('timm.')
            and type(module).__name__.endswith('Attention')
            and hasattr(module, 'num_heads'))


def count_flops(model: nn.Module, shape: Tuple[int, int]) -> Dict[str, int]:
    """Multiply-adds of ``model.backbone`` + ``model.decode_head`` for one
    (3, H, W) image, split into ``attention`` and ``other``."""
    counts = defaultdict(int)
    handles = []
    called = set()  # modules whose forward ran (a hook fired)

    def hook_for(name):

        def hook(module, inputs, output):
            called.add(name)
            part = 'attention' if _is_attention(name) else 'other'
            if _is_timm_attention(module):
                B, N, _ = inputs[0].shape
                qkv = getattr(module, 'qkv', None)
                inner = (qkv.out_features // 3 if qkv is not None else
                         module.q_proj.out_features)
                if qkv is not None and f'{name}.qkv' not in called:
                    # EVA adds its split q/v biases with F.linear on the
                    # weight: the Linear's own hook does not fire
                    counts['attention'] += B * N * qkv.in_features * 3 * inner
                counts['attention'] += 2 * B * N * N * inner
            elif isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                counts[part] += output.numel() * (
                    module.in_channels // module.groups) * kh * kw
            elif isinstance(module, nn.Linear):
                counts[part] += output.numel() * module.in_features
            elif isinstance(module, SelfAttention):
                B, N, C = inputs[0].shape
                qkv = B * N * C * 3 * C
                # QK^T and AV: each N x N x C per image
                counts['attention'] += qkv + 2 * B * N * N * C
            elif isinstance(module, ProxyHead):
                counts['other'] += output.numel() * NUM_NEIGHBOURS

        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, SelfAttention,
                               ProxyHead)) or _is_timm_attention(module):
            handles.append(module.register_forward_hook(hook_for(name)))
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model.decode_head(model.backbone(
                torch.zeros(1, 3, *shape, device=device)))
    finally:
        for handle in handles:
            handle.remove()
    return dict(counts)


def analyse(config: str, shape=None) -> dict:
    """Params and FLOPs of the model of ``config`` at ``shape`` (H, W)."""
    register_all_modules()
    cfg = Config.fromfile(config)
    shape = tuple(shape or cfg.get('crop_size', (512, 512)))
    with torch.device('meta'):
        model = MODELS.build(standalone_model_cfg(cfg.model)).eval()
    params = sum(p.numel() for p in model.parameters())
    counts = count_flops(model, shape)
    full = counts.get('attention', 0) + counts.get('other', 0)
    return dict(shape=shape, params=params, full=full,
                paper=counts.get('other', 0))


def main():
    parser = argparse.ArgumentParser(description='params and FLOPs')
    parser.add_argument('config')
    add_shape_arg(parser)
    args = parser.parse_args()
    result = analyse(args.config, args.shape)
    h, w = result['shape']
    print(f'Input shape: (3, {h}, {w})')
    print(f'Params: {result["params"] / 1e6:.2f}M ({result["params"]})')
    print(f'FLOPs (full): {result["full"] / 1e9:.1f}G')
    print(f'FLOPs (paper-comparable, attention blocks not counted): '
          f'{result["paper"] / 1e9:.1f}G')


if __name__ == '__main__':
    main()
