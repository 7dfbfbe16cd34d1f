from .atomic_local_backend import AtomicLocalBackend
from .autocast_optim_wrapper import AutocastOptimWrapper
from .checkpoint_io import atomic_save
from .checkpoint_loader import (CheckpointError, load_segmentor_checkpoint,
                                read_checkpoint)
from .non_finite_loss_hook import NonFiniteLossHook
from .rng_state_hook import RNGStateHook
from .skip_non_finite_optim_wrapper import SkipNonFiniteOptimWrapper
from .runner import RegProxyRunner

__all__ = [
    'AtomicLocalBackend', 'AutocastOptimWrapper', 'atomic_save',
    'CheckpointError', 'load_segmentor_checkpoint', 'read_checkpoint',
    'NonFiniteLossHook', 'RegProxyRunner', 'RNGStateHook',
    'SkipNonFiniteOptimWrapper'
]
