from typing import Any

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer
from mmseg.registry import HOOKS

__all__ = ['WeightsOnlyCheckpointHook']

_BUFFER_KEYS = {'log_history', 'count_history', 'max_length'}


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers, numpy arrays as
    tensors and HistoryBuffers as dicts of tensors, containers recursed."""
    if isinstance(value, HistoryBuffer):
        log_history, count_history = value.data
        return dict(
            log_history=torch.from_numpy(np.asarray(log_history)),
            count_history=torch.from_numpy(np.asarray(count_history)),
            max_length=value.max_length)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, dict):
        plain = {k: _plain(v) for k, v in value.items()}
        # keep OrderedDict (state dicts) and other dict types
        return type(value)(plain) if type(value) is not dict else plain
    if isinstance(value, (list, tuple)) and not hasattr(value, '_fields'):
        return type(value)(_plain(v) for v in value)
    return value


@HOOKS.register_module()
class WeightsOnlyCheckpointHook(Hook):
    """Write checkpoints that ``torch.load(weights_only=True)`` reads with
    no allow-list (mmseg's ``init_model`` and other tools too): the message
    hub's ``HistoryBuffer`` objects and numpy values become tensors and
    numbers before saving (lowest priority: after every other hook) and the
    buffers are rebuilt after loading, so resuming is unchanged.
    """

    priority = 'LOWEST'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        for key, value in checkpoint.items():
            if key not in ('state_dict', 'optimizer'):  # tensors already
                checkpoint[key] = _plain(value)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        scalars = checkpoint.get('message_hub', {}).get('log_scalars', {})
        for name, value in scalars.items():
            if isinstance(value, dict) and set(value) == _BUFFER_KEYS:
                scalars[name] = HistoryBuffer(
                    value['log_history'].numpy(),
                    value['count_history'].numpy(), value['max_length'])
