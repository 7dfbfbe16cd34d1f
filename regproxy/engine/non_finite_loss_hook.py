import math

from mmengine.hooks import Hook
from mmengine.logging import MessageHub
from mmseg.registry import HOOKS

__all__ = ['NonFiniteLossHook', 'SKIPPED_STEPS']

# Message hub info in which an optimizer wrapper that skips the update of
# a non-finite loss counts the steps it skipped.
SKIPPED_STEPS = 'non_finite_skipped_steps'


def _skipped_steps() -> int:
    return MessageHub.get_current_instance().get_info(SKIPPED_STEPS, 0)


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
    """Stop training at the first NaN or inf loss that was not skipped.

    Runs before the checkpoint hook (priority ``ABOVE_NORMAL``), so the
    step that produced the bad loss is never saved and the last good
    checkpoint stays the latest one to resume from. An iteration whose
    update the optimizer wrapper skipped (it counts it in the message hub's
    :data:`SKIPPED_STEPS`, as :class:`SkipNonFiniteOptimWrapper` does) is
    left to the wrapper, which decides when to stop.
    """

    priority = 'ABOVE_NORMAL'
    _skipped_before = 0

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self._skipped_before = _skipped_steps()

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        loss = (outputs or {}).get('loss')
        if loss is None or _skipped_steps() != self._skipped_before:
            return
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(
                f'loss is {value} at iteration {runner.iter + 1}: training '
                f'stopped; {_resume_advice()}')
