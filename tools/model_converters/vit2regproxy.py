"""Convert a timm or DeiT ImageNet ViT checkpoint for a RegionProxy config.

    python tools/model_converters/vit2regproxy.py SRC DST --config CONFIG

SRC is a timm ``state_dict`` file (e.g. saved from
``timm.create_model('vit_tiny_patch16_384', pretrained=True).state_dict()``)
or DeiT's released ``{'model': ...}`` file. DST holds the backbone weights in
mmseg names, classifier dropped, position embedding resized to the config's
``img_size``; pass it as ``model.backbone.pretrained`` (or
``--cfg-options model.backbone.init_cfg.checkpoint=DST``). The backbone also
accepts SRC directly, converting on load.
"""
import argparse
from typing import Optional, Sequence

import torch
from mmengine.config import Config
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

from regproxy.engine import (CheckpointError, load_checkpoint_file,
                             save_checkpoint_file)
from regproxy.models.utils.checkpoint_filter import checkpoint_filter_fn
from regproxy.utils import add_trust_checkpoint_arg, fail


def parse_args(argv: Optional[Sequence[str]] = None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='timm state_dict or DeiT checkpoint')
    parser.add_argument(
        'dst', help='output file (backbone state_dict; .safetensors or .pth)')
    parser.add_argument(
        '--config', required=True,
        help='RegionProxy config whose backbone the weights are for')
    add_trust_checkpoint_arg(parser)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    register_all_modules()
    backbone_cfg = Config.fromfile(args.config).model.backbone
    with torch.device('meta'):  # geometry only, no memory
        backbone = MODELS.build(backbone_cfg)
    try:
        checkpoint = load_checkpoint_file(args.src,
                                          trust=args.trust_checkpoint)
        state_dict = checkpoint_filter_fn(checkpoint, backbone)
    except (CheckpointError, ValueError) as error:
        fail(str(error))
    # a safetensors file holds the weights alone, which is all this is
    save_checkpoint_file({'state_dict': state_dict}, args.dst)
    grid = backbone.grid_size
    print(f'wrote {len(state_dict)} tensors to {args.dst} '
          f'(pos_embed grid {grid[0]}x{grid[1]})')


if __name__ == '__main__':
    main()
