"""AccumulatingTrainLoop on a tiny LayerNorm model (no BatchNorm): K
micro-batches make the update of one batch K times larger, and every count
of the run is in optimizer steps."""
import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from torch.utils.data import Dataset

from regproxy.engine import RegProxyRunner

SAMPLES = 24
_runs = itertools.count()


class Samples(Dataset):
    """Fixed random inputs and class labels."""

    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        self.inputs = torch.randn(SAMPLES, 6, generator=generator)
        self.labels = torch.randint(3, (SAMPLES, ), generator=generator)

    def __len__(self):
        return SAMPLES

    def __getitem__(self, index):
        return dict(inputs=self.inputs[index], labels=self.labels[index])


class LayerNormNet(BaseModel):
    """Linear, LayerNorm, GELU, linear; counts its forward passes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.GELU(),
                                 nn.Linear(16, 3))
        self.forwards = 0

    def forward(self, inputs, labels, mode='tensor'):
        self.forwards += 1
        logits = self.net(torch.stack(inputs))
        if mode == 'loss':
            return dict(loss=F.cross_entropy(logits, torch.stack(labels)))
        return logits


def _runner(work_dir,
            batch_size,
            accumulate,
            max_iters=3,
            resume=None,
            checkpoint_interval=2):
    loop = 'AccumulatingTrainLoop' if accumulate > 1 else 'IterBasedTrainLoop'
    # The hook writes the message hub as tensors: mmengine's checkpoints
    # hold HistoryBuffers, which weights-only reading refuses
    return RegProxyRunner(
        model=LayerNormNet(),
        work_dir=str(work_dir),
        train_dataloader=dict(dataset=Samples(),
                              sampler=dict(type='DefaultSampler',
                                           shuffle=False),
                              batch_size=batch_size,
                              num_workers=0),
        train_cfg=dict(type=loop, max_iters=max_iters),
        optim_wrapper=dict(type='OptimWrapper',
                           accumulative_counts=accumulate,
                           optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        param_scheduler=dict(type='LinearLR',
                             start_factor=0.1,
                             by_epoch=False,
                             begin=0,
                             end=max_iters),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook',
                                           by_epoch=False,
                                           interval=checkpoint_interval),
                           logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=[dict(type='WeightsOnlyCheckpointHook')],
        load_from=resume,
        resume=resume is not None,
        default_scope='mmseg',
        log_level='WARNING',
        experiment_name=f'accumulate{next(_runs)}')


def _weights(runner):
    return {k: v.clone() for k, v in runner.model.state_dict().items()}


@pytest.mark.parametrize('batch_size, accumulate', [(2, 4), (4, 2), (1, 8)])
def test_micro_batches_give_the_update_of_one_large_batch(
        tmp_path, batch_size, accumulate):
    large = _runner(tmp_path / 'large', 8, 1)
    large.train()
    small = _runner(tmp_path / 'small', batch_size, accumulate)
    small.train()
    for key, expected in _weights(large).items():
        diff = (_weights(small)[key] - expected).abs().max().item()
        assert diff <= 1e-6, (key, diff)
    # The logged loss of a step is the mean over its micro-batches: the
    # large batch's loss.
    losses = [
        small.message_hub.get_scalar('train/loss').data[0],
        large.message_hub.get_scalar('train/loss').data[0]
    ]
    torch.testing.assert_close(*[torch.as_tensor(x) for x in losses],
                               atol=1e-6,
                               rtol=0)


def test_everything_counts_optimizer_steps(tmp_path):
    runner = _runner(tmp_path, 2, 4, max_iters=3)
    runner.train()
    assert runner.iter == 3
    assert runner.model.forwards == 3 * 4  # micro-batches
    # checkpoint interval 2: after optimizer step 2 (and the last, 3)
    assert sorted(p.name for p in tmp_path.glob('iter_*.pth')) == [
        'iter_2.pth', 'iter_3.pth'
    ]
    # one logged loss per optimizer step
    assert len(runner.message_hub.get_scalar('train/loss').data[0]) == 3
    # the scheduler stepped 3 times: LinearLR has reached its end
    assert runner.optim_wrapper.get_lr()['lr'] == [pytest.approx(0.1)]
    checkpoint = torch.load(tmp_path / 'iter_2.pth', weights_only=False)
    assert checkpoint['meta']['iter'] == 2


def test_resume_between_steps_matches_uninterrupted(tmp_path):
    full = _runner(tmp_path / 'full', 2, 4, max_iters=3)
    full.train()
    resumed = _runner(tmp_path / 'resumed',
                      2,
                      4,
                      max_iters=3,
                      resume=str(tmp_path / 'full' / 'iter_2.pth'))
    resumed.train()
    # skipped 2 x 4 micro-batches, trained 1 x 4
    assert resumed.model.forwards == 4
    for key, expected in _weights(full).items():
        assert torch.equal(_weights(resumed)[key], expected), key


def test_hooks_see_the_micro_batches_of_a_step(tmp_path):
    runner = _runner(tmp_path, 2, 4, max_iters=2)
    seen = []

    class Recorder(Hook):

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            seen.append(
                torch.cat([torch.stack(b['labels']) for b in data_batch]))

    runner.register_hook(Recorder())
    runner.train()
    labels = Samples().labels
    assert [s.tolist()
            for s in seen] == [labels[:8].tolist(), labels[8:16].tolist()]
