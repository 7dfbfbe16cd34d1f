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

import torch
from mmengine.config import Config

from regproxy.engine import atomic_save
from regproxy.models.backbones.hybrid_embed import HybridPatchEmbed
from regproxy.models.utils import convert_vit_checkpoint


def target_from_config(backbone: dict):
    """(grid size, prefix tokens, hybrid, mode) of a config's backbone."""
    img_size = backbone.get('img_size', 512)
    img_size = (img_size, img_size) if isinstance(img_size, int) else img_size
    hybrid = backbone.get('embed_type') is not None
    stride = HybridPatchEmbed.stride if hybrid else backbone.get(
        'patch_size', 16)
    grid = (img_size[0] // stride, img_size[1] // stride)
    prefix = 2 if backbone.get('deit', False) else 1
    return grid, prefix, hybrid, backbone.get('interpolate_mode', 'bicubic')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='timm state_dict or DeiT checkpoint')
    parser.add_argument('dst', help='output file (backbone state_dict)')
    parser.add_argument(
        '--config', required=True,
        help='RegionProxy config whose backbone the weights are for')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    backbone = Config.fromfile(args.config).model.backbone
    grid, prefix, hybrid, mode = target_from_config(backbone)
    checkpoint = torch.load(args.src, map_location='cpu', weights_only=False)
    state_dict = convert_vit_checkpoint(checkpoint, grid, prefix, hybrid, mode)
    atomic_save({'state_dict': state_dict}, args.dst)
    print(f'wrote {len(state_dict)} tensors to {args.dst} '
          f'(pos_embed grid {grid[0]}x{grid[1]})')


if __name__ == '__main__':
    main()
