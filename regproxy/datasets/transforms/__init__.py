from .loading import (CheckedLoadAnnotations, CheckedLoadImageFromFile,
                      use_checked_loaders)

__all__ = [
    'CheckedLoadAnnotations', 'CheckedLoadImageFromFile',
    'use_checked_loaders'
]
