from typing import Sequence

import torch
from mmengine.runner import IterBasedTrainLoop
from mmseg.registry import LOOPS

__all__ = ['AccumulatingTrainLoop']


@LOOPS.register_module()
class AccumulatingTrainLoop(IterBasedTrainLoop):
    """``IterBasedTrainLoop`` whose iteration is one optimizer step over the
    ``accumulative_counts`` (K) micro-batches of the optimizer wrapper.

    mmengine's loop counts micro-batches; here ``max_iters``, the hooks'
    intervals, the schedulers and the log count optimizer steps, and a
    resumed run skips iteration x K batches (docs/fewer_gpus.md). The hooks'
    ``data_batch`` is the tuple of the K batches, their ``outputs`` the means
    of the K log variables.
    """

    def run(self) -> torch.nn.Module:
        """Train; the data iterator then yields K batches at a time."""
        wrapper = self.runner.optim_wrapper
        # mmengine 0.10.7 keeps K private (no public accessor);
        # OptimWrapperDict has none (K = 1).
        count = getattr(wrapper, '_accumulative_counts', 1)
        # The runner counted the wrapper's backward passes in this loop's
        # iterations; they are micro-batches.
        wrapper.initialize_count_status(
            self.runner.model, self.iter * count, self.max_iters * count)
        # mmengine's dataloader iterator is endless: zip never stops.
        self.dataloader_iterator = zip(*[self.dataloader_iterator] * count)
        return super().run()

    def run_iter(self, data_batch: Sequence[dict]) -> None:
        """One optimizer step over the micro-batches ``data_batch``.

        Args:
            data_batch (tuple[dict]): K batches of the dataloader.
        """
        self.runner.call_hook('before_train_iter',
                              batch_idx=self.iter,
                              data_batch=data_batch)
        logs = [
            self.runner.model.train_step(
                batch, optim_wrapper=self.runner.optim_wrapper)
            for batch in data_batch
        ]
        outputs = {
            key: sum(log[key].detach() for log in logs) / len(logs)
            for key in logs[0]
        }
        self.runner.call_hook('after_train_iter',
                              batch_idx=self.iter,
                              data_batch=data_batch,
                              outputs=outputs)
        # as IterBasedTrainLoop.run_iter does (mmengine 0.10.7: no setter)
        self._iter += 1
