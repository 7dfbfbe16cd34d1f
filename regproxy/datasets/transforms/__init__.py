from .loading import CheckedLoadAnnotations, CheckedLoadImageFromFile

__all__ = ['CheckedLoadAnnotations', 'CheckedLoadImageFromFile']
