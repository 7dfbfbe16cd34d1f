from .backbones import RegionProxyViT
from .decode_heads import ProxyHead
from .segmentors import PaddedSlideEncoderDecoder

__all__ = ['RegionProxyViT', 'ProxyHead', 'PaddedSlideEncoderDecoder']
