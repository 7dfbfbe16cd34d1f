"""Parameters and FLOPs of a RegionProxy model.

    python tools/analysis/get_flops.py CONFIG [--shape H W]

Multiply-adds for one image (default: the config's crop), counted by torch's
``FlopCounterMode`` on the ``meta`` device. "Paper-comparable" leaves out the
attention blocks, as the paper's counter did (README, model table).
"""
import argparse
from typing import Optional, Sequence

import torch
from mmseg.apis import init_model
from torch.utils.flop_counter import FlopCounterMode

from regproxy.models.decode_heads.proxy_head import NUM_NEIGHBOURS
from regproxy.utils import add_shape_arg, config_errors, load_config


def analyse(config: str, shape: Optional[Sequence[int]] = None) -> dict:
    """``params`` and the ``full`` and ``paper`` multiply-adds of the model
    of ``config`` for one (3, H, W) image of ``shape``."""
    cfg = load_config(config)
    shape = tuple(shape or cfg.get('crop_size', (512, 512)))
    with torch.device('meta'):
        with config_errors(cfg, 'the model'):
            model = init_model(cfg, device='meta')
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            logits = model.decode_head(
                model.backbone(torch.zeros(1, 3, *shape)))
    # Per module name, its own operations and those of its children; a
    # multiply-add counts as two FLOPs.
    attention = sum(
        sum(ops.values()) for name, ops in counter.get_flop_counts().items()
        if name.endswith('.attn') and '.attn.' not in name) // 2
    # and the head's 9-neighbour combination, which the counter misses
    full = counter.get_total_flops() // 2 + logits.numel() * NUM_NEIGHBOURS
    return dict(shape=shape, full=full, paper=full - attention,
                params=sum(p.numel() for p in model.parameters()))


def main():
    parser = argparse.ArgumentParser(description='params and FLOPs')
    parser.add_argument('config')
    add_shape_arg(parser)
    args = parser.parse_args()
    result = analyse(args.config, args.shape)
    print(f'Input shape: (3, {result["shape"][0]}, {result["shape"][1]})')
    print(f'Params: {result["params"] / 1e6:.2f}M ({result["params"]})')
    print(f'FLOPs (full): {result["full"] / 1e9:.1f}G')
    print(f'FLOPs (paper-comparable, attention blocks not counted): '
          f'{result["paper"] / 1e9:.1f}G')


if __name__ == '__main__':
    main()
