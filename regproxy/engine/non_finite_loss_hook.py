import math

from mmengine.hooks import Hook
from mmengine.logging import MessageHub
from mmseg.registry import HOOKS

__all__ = ['NonFiniteLossHook']


def _resume_advice() -> str:
    """What to do next, naming the checkpoint this run wrote last (the
    checkpoint hook's ``last_ckpt`` info), if any."""
    last = MessageHub.get_current_instance().get_info('last_ckpt')
    if last is None:
        return ('no checkpoint was written in this run. Check the data and '
                'the weights it starts from, or lower the learning rate: '
                '--cfg-options optim_wrapper.optimizer.lr=LOWER')
    return (f'the latest checkpoint, {last}, is from before this iteration. '
            'Check the data, or lower the learning rate and resume: --resume '
            '--cfg-options optim_wrapper.optimizer.lr=LOWER (a checkpoint '
            'written while the loss was already rising may hold damaged '
            'weights: then resume an earlier one with --resume-from)')


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Stop training at the first NaN or inf loss.

    Runs before the checkpoint hook (priority ``ABOVE_NORMAL``), so the
    step that produced the bad loss is never saved and the last good
    checkpoint stays the latest one to resume from.
    """

    priority = 'ABOVE_NORMAL'

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        loss = (outputs or {}).get('loss')
        if loss is None or math.isfinite(value := float(loss.detach())):
            return
        raise FloatingPointError(
            f'loss is {value} at iteration {runner.iter + 1}: training '
            f'stopped; {_resume_advice()}')
