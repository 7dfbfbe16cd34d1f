"""Convert a timm or DeiT ImageNet ViT checkpoint for a RegionProxy config.

    python tools/model_converters/vit2regproxy.py SRC DST --config CONFIG

DST holds the backbone weights as the backbone's ``checkpoint_filter_fn``
converts SRC on load, checked to fit it strictly; see
docs/checkpoints.md#imagenet-initialisation.
"""
import argparse
from typing import Optional, Sequence

import torch
from mmseg.registry import MODELS

from regproxy.engine import (CheckpointError, load_checkpoint_file,
                             save_checkpoint_file)
from regproxy.models.backbones import RegionProxyViT
from regproxy.models.utils.checkpoint_filter import checkpoint_filter_fn
from regproxy.models.utils.safe_checkpoint_loader import check_state_dict_fits
from regproxy.utils import (add_trust_checkpoint_arg, config_errors, fail,
                            load_config)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='timm state_dict or DeiT checkpoint')
    parser.add_argument('dst', help='backbone weights (.pth, .safetensors)')
    parser.add_argument('--config', required=True,
                        help='config whose backbone the weights are for')
    add_trust_checkpoint_arg(parser)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
        # geometry only, no memory
        with torch.device('meta'), config_errors(cfg, 'the backbone'):
            backbone = MODELS.build(cfg.model.backbone)
        if not isinstance(backbone, RegionProxyViT):
            fail(f'{args.config}: the backbone is {type(backbone).__name__}; '
                 'this converts ImageNet weights for RegionProxyViT. A timm '
                 'backbone reads a timm state_dict as it is: '
                 f'--cfg-options model.backbone.pretrained={args.src}')
        checkpoint = load_checkpoint_file(args.src,
                                          trust=args.trust_checkpoint)
        state_dict = checkpoint_filter_fn(checkpoint, backbone)
        check_state_dict_fits(
            backbone, state_dict, args.src,
            f'Expected ImageNet weights of the timm model of {args.config} '
            '(docs/checkpoints.md#imagenet-initialisation)')
    except (CheckpointError, ValueError) as error:
        fail(str(error))
    # a safetensors file holds the weights alone, which is all this is
    save_checkpoint_file({'state_dict': state_dict}, args.dst)
    grid = backbone.grid_size
    print(f'wrote {len(state_dict)} tensors to {args.dst} '
          f'(pos_embed grid {grid[0]}x{grid[1]})')


if __name__ == '__main__':
    main()
