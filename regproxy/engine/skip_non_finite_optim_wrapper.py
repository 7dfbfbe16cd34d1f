import logging
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.distributed as torch_dist
from mmengine.dist import all_reduce, is_distributed
from mmengine.logging import MessageHub, print_log
from mmengine.optim import OptimWrapper
from mmseg.registry import OPTIM_WRAPPERS

from ..models.utils.safe_checkpoint_loader import (CheckpointError,
                                                   load_checkpoint_file)
from .non_finite_loss_hook import SKIPPED_STEPS

__all__ = ['SkipNonFiniteOptimWrapper']


@OPTIM_WRAPPERS.register_module()
class SkipNonFiniteOptimWrapper(OptimWrapper):
    """Skip the update of a step whose loss is NaN or inf.

    A rare bad batch then costs one step instead of the run; a run that
    keeps diverging still stops, after ``max_consecutive_skips`` skipped
    steps in a row, before anything is checkpointed. Each skipped step is
    counted in the message hub's ``SKIPPED_STEPS`` info, so that
    :class:`NonFiniteLossHook`, which stops at a non-finite loss that was
    not skipped, leaves it to this wrapper.

    The forward pass of a skipped step has already updated the model's
    buffers (BatchNorm running statistics) with non-finite values: they are
    saved when the step begins (:meth:`optim_context`, a few kilobytes) and
    restored.

    In a distributed run all ranks skip together: a step is skipped when
    the loss of any rank is not finite (one all-reduce of a flag a step).

    Args:
        max_consecutive_skips (int): skipped steps in a row that stop the
            run. Default: 10.
        **kwargs: ``OptimWrapper`` arguments.
    """

    def __init__(self, max_consecutive_skips: int = 10, **kwargs):
        super().__init__(**kwargs)
        if max_consecutive_skips < 1:
            raise ValueError('max_consecutive_skips must be >= 1, got '
                             f'{max_consecutive_skips}')
        self.max_consecutive_skips = max_consecutive_skips
        self.consecutive_skips = 0
        self.total_skips = 0
        # (iteration, latest checkpoint then) of the first skipped step
        self.first_skip = None
        self._saved_buffers = []

    def _last_checkpoint_note(self) -> str:
        """Name the last checkpoint written before the first skipped step
        and say whether its weights are finite (loaded to check)."""
        iteration, path = self.first_skip
        if not path:
            return (f'No checkpoint was written before the first skipped '
                    f'step (iteration {iteration}): check the data, or lower '
                    'the learning rate and start again.')
        try:
            weights = load_checkpoint_file(path).get('state_dict', {})
            finite = all(torch.isfinite(w).all() for w in weights.values()
                         if torch.is_tensor(w) and w.is_floating_point())
            state = ('its weights are all finite' if finite else
                     'some of its weights are NOT finite: use an earlier one')
        except CheckpointError as error:
            state = f'it cannot be read: {error}'
        return (f'The last checkpoint written before the first skipped step '
                f'(iteration {iteration}) is {path}; {state}. Check the data, '
                'or lower the learning rate and resume from it: --resume-from '
                f'{path} --cfg-options optim_wrapper.optimizer.lr=LOWER (if '
                'the loss was already rising when it was written, its weights '
                'may be damaged although finite: then take an earlier one).')

    @contextmanager
    def optim_context(self, model: nn.Module):
        """``OptimWrapper``'s context, saving the model's buffers first.

        Args:
            model (nn.Module): the model being trained.
        """
        self._saved_buffers = [(buffer, buffer.detach().clone())
                               for buffer in model.buffers()]
        with super().optim_context(model):
            yield

    def update_params(self, loss: torch.Tensor, step_kwargs=None,
                      zero_kwargs=None) -> None:
        """Update as ``OptimWrapper`` does, unless the loss is not finite.

        A skipped step still counts towards gradient accumulation: the
        other micro-batches of its window are applied, unless the skipped
        one ends the window, which then drops the window's gradients.
        """
        finite = torch.isfinite(loss.detach()).all().float()
        if is_distributed():
            all_reduce(finite, op=torch_dist.ReduceOp.MIN)
        if finite.item():
            self.consecutive_skips = 0
            super().update_params(loss, step_kwargs, zero_kwargs)
            return
        self.consecutive_skips += 1
        self.total_skips += 1
        iteration = self.inner_count + 1
        hub = MessageHub.get_current_instance()
        hub.update_info(SKIPPED_STEPS, hub.get_info(SKIPPED_STEPS, 0) + 1,
                        resumed=False)
        if self.first_skip is None:
            self.first_skip = (iteration, hub.get_info('last_ckpt'))
        if self.consecutive_skips >= self.max_consecutive_skips:
            raise FloatingPointError(
                f'loss not finite for {self.consecutive_skips} iterations in '
                f'a row, the last at iteration {iteration}: training stopped. '
                + self._last_checkpoint_note())
        print_log(
            f'loss not finite at iteration {iteration} (here: {loss.item()}): '
            f'update skipped ({self.consecutive_skips} in a row, '
            f'{self.total_skips} in all)',
            'current', level=logging.WARNING)
        with torch.no_grad():
            for buffer, saved in self._saved_buffers:
                buffer.copy_(saved)
        # Count the step through OptimWrapper's own backward(): a zero
        # outside the model's graph gives no parameter a gradient.
        self.backward(torch.zeros((), requires_grad=True))
        if self.should_update():
            self.zero_grad(**(zero_kwargs or {}))
