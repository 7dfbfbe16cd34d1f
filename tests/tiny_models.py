"""The tiny RegionProxy segmentor the unit tests build."""
import torch.nn as nn
from mmengine.config import ConfigDict
from mmseg.registry import MODELS


def tiny_segmentor_cfg(num_classes: int = 5,
                       embed_dims: int = 32,
                       num_layers: int = 2,
                       deit: bool = False,
                       mode: str = 'whole') -> ConfigDict:
    """ViT of ``embed_dims`` width at 64x64 (16 px patches), a BN ProxyHead;
    slide inference uses 64 px windows with stride 48."""
    return ConfigDict(
        type='PaddedSlideEncoderDecoder',
        backbone=dict(
            type='RegionProxyViT', img_size=64, embed_dims=embed_dims,
            num_layers=num_layers, num_heads=2,
            out_indices=(num_layers - 2, num_layers - 1), deit=deit),
        decode_head=dict(
            type='ProxyHead', in_channels=(embed_dims, embed_dims),
            channels=16, num_classes=num_classes, norm_cfg=dict(type='BN')),
        test_cfg=dict(mode=mode, crop_size=(64, 64), stride=(48, 48)))


def tiny_segmentor(**kwargs) -> nn.Module:
    """:func:`tiny_segmentor_cfg` built, initialised, in eval mode."""
    model = MODELS.build(tiny_segmentor_cfg(**kwargs))
    model.init_weights()
    return model.eval()
