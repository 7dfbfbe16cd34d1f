"""Parameters and FLOPs of a RegionProxy model.

    python tools/analysis/get_flops.py CONFIG [--shape H W]

FLOPs are multiply-adds counted once (the mmcv/mmseg convention) for one
image of H x W (default: the config's crop size). Two counts are printed:

- full: every convolution and matmul, attention's qkv/output projections and
  its QK^T and AV products included, and the head's 9-neighbour combination;
- paper: what the paper's table reports. Its counter did not see the
  attention blocks at all, so this count is the full one without them
  (MLPs, patch embedding or stem, and head).

Convolutions, matmuls and attention are counted by torch's
``FlopCounterMode``, per module; the 9-neighbour combination, element-wise
work that it does not count, is added. The model is built on the ``meta``
device: shapes only, nothing allocated, so the largest models are counted in
seconds.
"""
import argparse
from typing import Dict, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules
from torch.utils.flop_counter import FlopCounterMode

import regproxy  # noqa: F401 registers the RegionProxy modules
from regproxy.models.decode_heads.proxy_head import NUM_NEIGHBOURS
from regproxy.utils import add_shape_arg, standalone_model_cfg


def count_flops(model: nn.Module, shape: Tuple[int, int]) -> Dict[str, int]:
    """Multiply-adds of ``model.backbone`` + ``model.decode_head`` for one
    (3, H, W) image, split into ``attention`` (the ``attn`` blocks) and
    ``other``."""
    device = next(model.parameters()).device
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        logits = model.decode_head(
            model.backbone(torch.zeros(1, 3, *shape, device=device)))
    # Per module name, its own operations and those of its children.
    modules = counter.get_flop_counts()
    attention = sum(
        sum(ops.values()) for name, ops in modules.items()
        if name.endswith('.attn') and '.attn.' not in name)
    # FlopCounterMode counts a multiply-add as two FLOPs.
    total = counter.get_total_flops() // 2 + logits.numel() * NUM_NEIGHBOURS
    return dict(attention=attention // 2, other=total - attention // 2)


def analyse(config: str, shape=None) -> dict:
    """Params and FLOPs of the model of ``config`` at ``shape`` (H, W)."""
    register_all_modules()
    cfg = Config.fromfile(config)
    shape = tuple(shape or cfg.get('crop_size', (512, 512)))
    with torch.device('meta'):
        model = MODELS.build(standalone_model_cfg(cfg.model)).eval()
    params = sum(p.numel() for p in model.parameters())
    counts = count_flops(model, shape)
    return dict(shape=shape, params=params,
                full=counts['attention'] + counts['other'],
                paper=counts['other'])


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
