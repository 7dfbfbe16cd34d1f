import math

from mmengine.hooks import Hook
from mmseg.registry import HOOKS

from .skip_non_finite_optim_wrapper import SkipNonFiniteOptimWrapper


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Stop training at the first NaN or inf loss.

    Runs before the checkpoint hook (priority ``ABOVE_NORMAL``), so the
    step that produced the bad loss is never saved and the last good
    checkpoint stays the latest one to resume from. With
    :class:`SkipNonFiniteOptimWrapper`, which skips such steps and decides
    when to stop, it stands aside.
    """

    priority = 'ABOVE_NORMAL'

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        loss = (outputs or {}).get('loss')
        if loss is None or isinstance(runner.optim_wrapper,
                                      SkipNonFiniteOptimWrapper):
            return
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(
                f'loss is {value} at iteration {runner.iter + 1}: training '
                f'stopped; the latest checkpoint in {runner.work_dir} is from '
                'before this iteration. Check the data, or lower the learning '
                'rate and resume: --resume --cfg-options '
                'optim_wrapper.optimizer.lr=LOWER (a checkpoint written while '
                'the loss was already rising may hold damaged weights: then '
                'resume an earlier one with --resume-from)')
