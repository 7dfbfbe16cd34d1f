from .backbones import RegionProxyViT, TimmRegionProxyViT
from .decode_heads import ProxyHead
from .segmentors import PaddedSlideEncoderDecoder

__all__ = [
    'RegionProxyViT', 'TimmRegionProxyViT', 'ProxyHead',
    'PaddedSlideEncoderDecoder'
]
