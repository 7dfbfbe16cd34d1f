from .shapes import ShapesDataset, generate_shapes_dataset

__all__ = ['ShapesDataset', 'generate_shapes_dataset']
