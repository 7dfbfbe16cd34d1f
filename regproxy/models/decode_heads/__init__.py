from .proxy_head import ProxyHead

__all__ = ['ProxyHead']
