from types import SimpleNamespace

import pytest
import torch
from mmengine.logging import MessageHub

from regproxy.engine import NonFiniteLossHook


def stop_at_iteration_42(loss, last_ckpt=None):
    """The message of a hook that sees ``loss`` at iteration 42."""
    hub = MessageHub.get_instance(f'test_non_finite_{last_ckpt}')  # current
    if last_ckpt:
        hub.update_info('last_ckpt', last_ckpt)
    runner = SimpleNamespace(iter=41, work_dir='work_dirs/x',
                             optim_wrapper=None)
    hook = NonFiniteLossHook()
    hook.before_train_iter(runner, 0)
    hook.after_train_iter(runner, 0, outputs=dict(loss=torch.tensor(1.5)))
    hook.before_train_iter(runner, 1)
    with pytest.raises(FloatingPointError, match='at iteration 42') as error:
        hook.after_train_iter(runner, 0, outputs=dict(loss=torch.tensor(loss)))
    return str(error.value)


@pytest.mark.parametrize('loss', [float('nan'), float('inf')])
def test_non_finite_loss_stops_naming_the_latest_checkpoint(loss):
    message = stop_at_iteration_42(loss, 'work_dirs/x/iter_40.pth')
    assert 'the latest checkpoint, work_dirs/x/iter_40.pth, is from before'\
        in message and '--resume' in message


def test_without_a_checkpoint_no_resume_is_advised():
    message = stop_at_iteration_42(float('nan'))
    assert 'no checkpoint was written in this run' in message
    assert '--resume' not in message and 'latest' not in message
