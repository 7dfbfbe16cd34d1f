from .data_roots import check_data_roots, leaf_datasets
from .loading import (CheckedLoadAnnotations, CheckedLoadImageFromFile,
                      DataError, use_checked_loaders)
from .shapes import ShapesDataset, generate_shapes_dataset

__all__ = [
    'CheckedLoadAnnotations', 'CheckedLoadImageFromFile', 'DataError',
    'ShapesDataset', 'check_data_roots', 'generate_shapes_dataset',
    'leaf_datasets', 'use_checked_loaders'
]
