from ..models.utils.safe_checkpoint_loader import (CheckpointError,
                                                   load_checkpoint_file,
                                                   non_finite_weights_allowed,
                                                   trusted_checkpoints)
from .accumulating_train_loop import AccumulatingTrainLoop
from .atomic_local_backend import AtomicLocalBackend
from .autocast_optim_wrapper import AutocastOptimWrapper
from .checkpoint import (load_segmentor_checkpoint, load_weights,
                         save_checkpoint_file)
from .label_checks_hook import LabelChecksHook
from .non_finite_loss_hook import NonFiniteLossHook
from .rng_state_hook import RNGStateHook
from .runner import RegProxyRunner, find_resumable_checkpoints
from .unwrap_model import unwrap_model
from .weights_only_checkpoint_hook import WeightsOnlyCheckpointHook
from .work_dir_lock import WorkDirBusyError, WorkDirLock

__all__ = [
    'AccumulatingTrainLoop', 'AtomicLocalBackend', 'AutocastOptimWrapper',
    'CheckpointError', 'LabelChecksHook', 'load_checkpoint_file',
    'load_segmentor_checkpoint', 'load_weights', 'save_checkpoint_file',
    'trusted_checkpoints', 'non_finite_weights_allowed', 'NonFiniteLossHook',
    'RNGStateHook', 'RegProxyRunner', 'find_resumable_checkpoints',
    'unwrap_model', 'WeightsOnlyCheckpointHook', 'WorkDirBusyError',
    'WorkDirLock'
]
