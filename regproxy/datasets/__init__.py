from .data_roots import check_data_roots
from .shapes import ShapesDataset, generate_shapes_dataset
from .transforms import (CheckedLoadAnnotations, CheckedLoadImageFromFile,
                         use_checked_loaders)

__all__ = [
    'CheckedLoadAnnotations', 'CheckedLoadImageFromFile', 'ShapesDataset',
    'check_data_roots', 'generate_shapes_dataset', 'use_checked_loaders'
]
