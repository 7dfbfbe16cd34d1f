from .data_roots import check_data_roots, leaf_datasets
from .shapes import ShapesDataset, generate_shapes_dataset
from .transforms import (CheckedLoadAnnotations, CheckedLoadImageFromFile,
                         is_truncated, to_class_ids, use_checked_loaders)

__all__ = [
    'CheckedLoadAnnotations', 'CheckedLoadImageFromFile', 'ShapesDataset',
    'check_data_roots', 'generate_shapes_dataset', 'is_truncated',
    'leaf_datasets', 'to_class_ids', 'use_checked_loaders'
]
