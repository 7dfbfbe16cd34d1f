from functools import partial

import torch
import torch.nn as nn
from timm.layers import StdConv2dSame
from timm.models.resnetv2 import ResNetV2

# timm model name -> stage depths of its BiT ResNetV2 stem.
HYBRID_STEMS = {
    'vit_small_r26_s32_384': (2, 2, 2, 2),
    'vit_large_r50_s32_384': (3, 4, 6, 3),
}


class HybridPatchEmbed(nn.Module):
    """BiT ResNetV2 stem (timm's ``_resnetv2`` layout) + 1x1 projection.

    Weight-standardised "same"-padded convolutions with GroupNorm, no
    pre-activation; the stride-32 features are projected to ``embed_dims``.
    Submodule names (``backbone``, ``proj``) match timm's ``HybridEmbed``.
    ``with_cp`` turns on timm's gradient checkpointing of the stages.
    """

    stride = 32

    def __init__(self,
                 embed_type: str,
                 in_channels: int,
                 embed_dims: int,
                 with_cp: bool = False):
        super().__init__()
        self.backbone = ResNetV2(
            layers=HYBRID_STEMS[embed_type],
            num_classes=0,
            global_pool='',
            in_chans=in_channels,
            preact=False,
            stem_type='same',
            conv_layer=partial(StdConv2dSame, eps=1e-8))
        self.backbone.set_grad_checkpointing(with_cp)
        self.proj = nn.Conv2d(
            self.backbone.num_features, embed_dims, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) -> (B, embed_dims, ceil(H/32), ceil(W/32))."""
        return self.proj(self.backbone.forward_features(x))
