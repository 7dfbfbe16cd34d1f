"""A hook that kills one rank of a training run, for the tests of how a
distributed job ends. Configs load it with ``custom_imports``."""
import os
import signal
import time

from mmengine.hooks import Hook
from mmseg.registry import HOOKS


@HOOKS.register_module()
class KillRankHook(Hook):
    """SIGKILL the process of ``rank`` as ``iteration`` (1-based) starts,
    after writing the time to ``work_dir/killed_at``."""

    def __init__(self, rank: int = 1, iteration: int = 2):
        self.rank = rank
        self.iteration = iteration

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.rank == self.rank and runner.iter + 1 == self.iteration:
            with open(os.path.join(runner.work_dir, 'killed_at'), 'w') as f:
                f.write(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)
