"""Skipping the updates of steps whose loss is NaN or inf."""
from types import SimpleNamespace

import pytest
import torch
from mmengine.logging import MMLogger
from mmseg.registry import OPTIM_WRAPPERS

from regproxy.engine import NonFiniteLossHook


def _wrapper(model=None, **kwargs):
    torch.manual_seed(0)
    model = model or torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    wrapper = OPTIM_WRAPPERS.build(
        dict(type='SkipNonFiniteOptimWrapper', optimizer=optimizer,
             **kwargs))
    return model, wrapper


def _loss(model, scale=1.):
    return model(torch.ones(1, 3)).sum() * scale


def test_finite_loss_updates():
    model, wrapper = _wrapper()
    before = model.weight.detach().clone()
    wrapper.update_params(_loss(model))
    assert not torch.equal(model.weight, before)
    assert wrapper.consecutive_skips == 0


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_non_finite_loss_skips_the_update(bad):
    model, wrapper = _wrapper()
    wrapper.update_params(_loss(model))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    adam_steps = wrapper.optimizer.state[model.weight]['step'].clone()
    records = []
    MMLogger.get_current_instance().addFilter(
        lambda record: records.append(record.getMessage()))
    try:
        wrapper.update_params(_loss(model, bad))
    finally:
        MMLogger.get_current_instance().filters.clear()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    assert model.weight.grad is None  # nothing carried into the next step
    assert torch.equal(wrapper.optimizer.state[model.weight]['step'],
                       adam_steps)
    assert any('at iteration 2' in r and 'update skipped' in r
               for r in records)
    # Iterations still count (schedulers and accumulation stay in step).
    assert wrapper.inner_count == 2
    wrapper.update_params(_loss(model))
    assert wrapper.consecutive_skips == 0 and wrapper.total_skips == 1
    assert torch.isfinite(model.weight).all()


def test_skipped_step_restores_batchnorm_statistics():
    model, wrapper = _wrapper(torch.nn.BatchNorm1d(3))
    with wrapper.optim_context(model):
        loss = model(torch.full((4, 3), float('nan'))).sum()
    assert torch.isnan(model.running_mean).all()
    wrapper.update_params(loss)
    assert torch.equal(model.running_mean, torch.zeros(3))
    assert torch.equal(model.running_var, torch.ones(3))
    assert model.num_batches_tracked.item() == 0


def test_too_many_skips_in_a_row_stop():
    model, wrapper = _wrapper(max_consecutive_skips=3)
    wrapper.update_params(_loss(model, float('nan')))
    wrapper.update_params(_loss(model))  # resets the count
    wrapper.update_params(_loss(model, float('nan')))
    wrapper.update_params(_loss(model, float('nan')))
    with pytest.raises(FloatingPointError,
                       match='3 iterations in a row, the last at iteration 5'):
        wrapper.update_params(_loss(model, float('nan')))


def test_max_consecutive_skips_is_checked():
    with pytest.raises(ValueError, match='max_consecutive_skips'):
        _wrapper(max_consecutive_skips=0)


def test_stop_hook_leaves_skipped_steps_to_the_wrapper():
    model, wrapper = _wrapper()
    runner = SimpleNamespace(iter=0, work_dir='w', optim_wrapper=wrapper)
    hook = NonFiniteLossHook()
    nan = dict(loss=torch.tensor(float('nan')))
    hook.before_train_iter(runner, 0)
    wrapper.update_params(_loss(model, float('nan')))  # skipped
    hook.after_train_iter(runner, 0, outputs=nan)
    hook.before_train_iter(runner, 1)  # a NaN that no one skipped
    with pytest.raises(FloatingPointError, match='at iteration 1'):
        hook.after_train_iter(runner, 1, outputs=nan)
