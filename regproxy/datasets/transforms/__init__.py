from .loading import (CheckedLoadAnnotations, CheckedLoadImageFromFile,
                      exif_orientation, is_truncated, size_mismatch_hint,
                      to_class_ids, unturned_flag, use_checked_loaders)

__all__ = [
    'CheckedLoadAnnotations', 'CheckedLoadImageFromFile', 'exif_orientation',
    'is_truncated', 'size_mismatch_hint', 'to_class_ids', 'unturned_flag',
    'use_checked_loaders'
]
