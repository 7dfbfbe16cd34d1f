from typing import Iterator, List, Sequence

import torch
from mmengine.runner import IterBasedTrainLoop
from mmseg.registry import LOOPS

__all__ = ['AccumulatingTrainLoop']


def _micro_batches(batches: Iterator, count: int) -> Iterator[List[dict]]:
    """Lists of ``count`` consecutive batches of mmengine's endless
    dataloader iterator ``batches``."""
    while True:
        yield [next(batches) for _ in range(count)]


def _joined(batches: List[dict]):
    """The micro-batches as the one batch the hooks see: mmengine's
    ``pseudo_collate`` gives dicts of lists, which are joined per key;
    other batches are passed as the list."""
    if all(
            isinstance(batch, dict) and all(
                isinstance(value, list) for value in batch.values())
            for batch in batches):
        return {
            key: [item for batch in batches for item in batch[key]]
            for key in batches[0]
        }
    return batches


def _mean(values: Sequence) -> object:
    """Mean of logged values (tensors or numbers), detached."""
    values = [v.detach() if isinstance(v, torch.Tensor) else v for v in values]
    return sum(values) / len(values)


@LOOPS.register_module()
class AccumulatingTrainLoop(IterBasedTrainLoop):
    """``IterBasedTrainLoop`` whose iteration is one optimizer step over the
    ``accumulative_counts`` (K) micro-batches of the optimizer wrapper.

    mmengine's ``OptimWrapper(accumulative_counts=K)`` accumulates the
    gradients of K ``update_params`` calls (each loss divided by K) and
    steps once, but its loop still counts micro-batches, so every length of
    a recipe would have to be multiplied by K. Here one iteration takes K
    batches, so ``max_iters``, ``val_interval``, the hooks' intervals
    (checkpoint, logger), the parameter schedulers (stepped once per
    iteration) and the iteration in logs and checkpoints all count
    optimizer steps: 2 processes x 2 images x K=4 follow the schedule of
    8 x 2. Checkpoints fall between optimizer steps, and a resumed run skips
    iteration x K batches, so resuming is exact.

    With BatchNorm, statistics are computed per micro-batch.

    Call flow::

        run(): wrapper counts in micro-batches -> IterBasedTrainLoop.run()
        run_iter(K batches): before_train_iter -> K x model.train_step()
            -> after_train_iter (outputs: mean of the K log variables)

    The hooks see the K micro-batches joined into one batch.
    """

    def run(self) -> torch.nn.Module:
        """Train; the data iterator then yields K batches at a time."""
        wrapper = self.runner.optim_wrapper
        # mmengine 0.10.7 keeps K private (no public accessor);
        # OptimWrapperDict has none (K = 1).
        count = getattr(wrapper, '_accumulative_counts', 1)
        # The runner counted the wrapper's backward passes in this loop's
        # iterations (and, resuming at a step that is not a multiple of K,
        # warned of lost gradients); they are micro-batches.
        wrapper.initialize_count_status(self.runner.model, self._iter * count,
                                        self._max_iters * count)
        self.dataloader_iterator = _micro_batches(self.dataloader_iterator,
                                                  count)
        return super().run()

    def run_iter(self, data_batch: List[dict]) -> None:
        """One optimizer step over the micro-batches ``data_batch``.

        Args:
            data_batch (list[dict]): K batches of the dataloader.
        """
        whole = _joined(data_batch)
        self.runner.call_hook('before_train_iter',
                              batch_idx=self._iter,
                              data_batch=whole)
        logs = [
            self.runner.model.train_step(
                batch, optim_wrapper=self.runner.optim_wrapper)
            for batch in data_batch
        ]
        outputs = {key: _mean([log[key] for log in logs]) for key in logs[0]}
        self.runner.call_hook('after_train_iter',
                              batch_idx=self._iter,
                              data_batch=whole,
                              outputs=outputs)
        self._iter += 1
