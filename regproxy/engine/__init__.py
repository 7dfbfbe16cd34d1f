from .atomic_local_backend import AtomicLocalBackend
from .checkpoint_io import atomic_save
from .checkpoint_loader import (CheckpointError, load_segmentor_checkpoint,
                                read_checkpoint)
from .runner import RegProxyRunner

__all__ = [
    'AtomicLocalBackend', 'atomic_save', 'CheckpointError',
    'load_segmentor_checkpoint', 'read_checkpoint', 'RegProxyRunner'
]
