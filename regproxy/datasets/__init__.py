from .data_roots import check_data_roots, leaf_datasets
from .loading import (CheckedLoadAnnotations, CheckedLoadImageFromFile,
                      exif_orientation, is_truncated, size_mismatch_hint,
                      to_class_ids, unturned_flag, use_checked_loaders)
from .shapes import ShapesDataset, generate_shapes_dataset

__all__ = [
    'CheckedLoadAnnotations', 'CheckedLoadImageFromFile', 'ShapesDataset',
    'check_data_roots', 'exif_orientation', 'generate_shapes_dataset',
    'is_truncated', 'leaf_datasets', 'size_mismatch_hint', 'to_class_ids',
    'unturned_flag', 'use_checked_loaders'
]
