from .shapes import ShapesDataset, generate_shapes_dataset
from .transforms import CheckedLoadAnnotations, CheckedLoadImageFromFile

__all__ = [
    'CheckedLoadAnnotations', 'CheckedLoadImageFromFile', 'ShapesDataset',
    'generate_shapes_dataset'
]
