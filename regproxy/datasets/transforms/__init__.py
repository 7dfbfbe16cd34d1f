from .loading import (CheckedLoadAnnotations, CheckedLoadImageFromFile,
                      is_truncated, to_class_ids, use_checked_loaders)

__all__ = [
    'CheckedLoadAnnotations', 'CheckedLoadImageFromFile', 'is_truncated',
    'to_class_ids', 'use_checked_loaders'
]
