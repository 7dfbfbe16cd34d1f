from .vit import RegionProxyViT

__all__ = ['RegionProxyViT']
