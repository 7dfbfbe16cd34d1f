from .timm_vit import TimmRegionProxyViT
from .vit import RegionProxyViT

__all__ = ['RegionProxyViT', 'TimmRegionProxyViT']
