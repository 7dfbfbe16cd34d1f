from types import SimpleNamespace

import pytest
import torch

from regproxy.engine import NonFiniteLossHook


@pytest.mark.parametrize('loss', [float('nan'), float('inf')])
def test_non_finite_loss_stops_with_iteration(loss):
    runner = SimpleNamespace(
        iter=41, work_dir='work_dirs/x', optim_wrapper=None)
    hook = NonFiniteLossHook()
    hook.before_train_iter(runner, 0)
    hook.after_train_iter(runner, 0, outputs=dict(loss=torch.tensor(1.5)))
    hook.before_train_iter(runner, 1)
    with pytest.raises(FloatingPointError, match='at iteration 42'):
        hook.after_train_iter(runner, 0, outputs=dict(loss=torch.tensor(loss)))
