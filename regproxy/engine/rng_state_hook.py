import random

import numpy as np
import torch
from mmengine.hooks import Hook
from mmseg.registry import HOOKS

__all__ = ['RNGStateHook']


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Save the main process's random states in checkpoints (as tensors
    and numbers, read weights-only) and restore them on resume, so a resumed
    run draws the same drop-path masks as an uninterrupted one: mmengine's
    resume only re-seeds. (Augmentation runs in the dataloader workers,
    which the loop's skip over finished iterations replays.)
    """

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
        state = dict(
            python=random.getstate(),
            numpy=(kind, torch.from_numpy(keys.astype(np.int64)), pos,
                   has_gauss, cached_gaussian),
            torch=torch.get_rng_state())
        if torch.cuda.is_available():
            state['cuda'] = torch.cuda.get_rng_state_all()
        checkpoint['rng_state'] = state

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get('rng_state')
        # Loading weights to start a new run keeps its own seed.
        if state is None or not getattr(runner, 'resuming', False):
            return
        random.setstate(state['python'])
        kind, keys, pos, has_gauss, cached_gaussian = state['numpy']
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos,
                             has_gauss, cached_gaussian))
        torch.set_rng_state(state['torch'])
        if 'cuda' in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state['cuda'])
