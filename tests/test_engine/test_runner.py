"""RegProxyRunner: safe, checked loading in mmengine's order."""
import os

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmseg.registry import HOOKS

from regproxy.engine import (CheckpointError, RegProxyRunner,
                             find_resumable_checkpoints)
from tests.tiny_models import tiny_segmentor, tiny_segmentor_cfg


@HOOKS.register_module()
class ScaleHeadBiasHook(Hook):
    """Edits the checkpoint as EMAHook does: before it reaches the model."""

    def after_load_checkpoint(self, runner, checkpoint):
        weights = checkpoint['state_dict']
        for key in weights:
            if key.endswith('decode_head.mlp.0.0.bias'):
                weights[key] = weights[key] + 1


def build_runner(tmp_path, **cfg):
    return RegProxyRunner(
        model=tiny_segmentor_cfg(), work_dir=str(tmp_path / 'work'),
        custom_hooks=[dict(type='ScaleHeadBiasHook')],
        default_scope='mmseg', cfg=dict(cfg))


def test_hooks_edit_the_checkpoint_before_the_model_gets_it(tmp_path):
    source = tiny_segmentor()
    path = tmp_path / 'model.pth'
    torch.save({'state_dict': {f'module.{k}': v for k, v in
                               source.state_dict().items()}}, path)
    runner = build_runner(tmp_path)
    runner.load_checkpoint(str(path))  # default revise_keys strip module.
    bias = source.decode_head.mlp[0][0].bias
    torch.testing.assert_close(runner.model.decode_head.mlp[0][0].bias,
                               bias + 1)
    assert runner._has_loaded


def test_revise_keys_and_mismatch_messages(tmp_path):
    path = tmp_path / 'model.pth'
    torch.save({'state_dict': {f'seg.{k}': v for k, v in
                               tiny_segmentor().state_dict().items()}}, path)
    runner = build_runner(tmp_path)
    with pytest.raises(CheckpointError, match='missing in the checkpoint'):
        runner.load_checkpoint(str(path), revise_keys=[])
    runner.load_checkpoint(str(path), revise_keys=[(r'^seg\.', '')])


def test_trust_checkpoint_config_key(tmp_path):
    from tests.test_engine.test_checkpoint import crafted_checkpoint
    marker = tmp_path / 'marker'
    path = crafted_checkpoint(tmp_path / 'model.pth', marker)
    with pytest.raises(CheckpointError, match='trust'):
        build_runner(tmp_path).load_checkpoint(str(path))
    assert not marker.exists()
    build_runner(tmp_path, trust_checkpoint=True).load_checkpoint(str(path))
    assert marker.exists()


def test_resumable_checkpoints_newest_first(tmp_path):
    for name in ['iter_8.pth', 'iter_16.pth', 'iter_4.pth', 'best_x.pth',
                 'last_checkpoint', 'epoch_2.pth']:
        (tmp_path / name).write_text('x')
    found = [os.path.basename(p) for p in find_resumable_checkpoints(
        str(tmp_path))]
    assert found == ['iter_16.pth', 'iter_8.pth', 'iter_4.pth',
                     'epoch_2.pth']
    assert find_resumable_checkpoints(str(tmp_path / 'none')) == []


def test_load_from_non_finite_weights_is_the_load_error(tmp_path):
    from tests.test_engine.test_checkpoint import nan_checkpoint
    path = str(nan_checkpoint(tmp_path / 'broken.pth'))
    runner = RegProxyRunner(
        model=tiny_segmentor_cfg(), work_dir=str(tmp_path / 'work'),
        load_from=path, default_scope='mmseg', cfg=dict(load_from=path))
    with pytest.raises(CheckpointError, match='broken.pth holds non-finite'):
        runner.load_or_resume()
    build_runner(tmp_path, allow_non_finite_weights=True).load_checkpoint(
        path)


def test_resume_from_a_weights_only_checkpoint_says_load_from(tmp_path):
    path = tmp_path / 'released_0x.pth'
    torch.save({'state_dict': tiny_segmentor().state_dict(),
                'meta': {'epoch': 1, 'iter': 160000}}, path)
    with pytest.raises(CheckpointError) as error:
        build_runner(tmp_path).resume(str(path))
    assert str(error.value) == (
        f'cannot resume from {path}: it holds weights but no training state '
        '(an mmseg 0.x or converted checkpoint); use --load-from to start '
        'training from its weights')


def test_resume_takes_the_newest_readable_checkpoint_and_its_seed(tmp_path):
    work = tmp_path / 'work'
    work.mkdir()
    torch.save({'state_dict': tiny_segmentor().state_dict(),
                'meta': {'seed': 7}}, work / 'iter_2.pth')
    (work / 'iter_4.pth').write_bytes(b'truncated')
    cfg = Config(dict(model=tiny_segmentor_cfg(), work_dir=str(work),
                      resume=True, default_scope='mmseg',
                      experiment_name='newest_readable'))
    runner = RegProxyRunner.from_cfg(cfg)
    assert runner.cfg.load_from == str(work / 'iter_2.pth')
    assert runner.seed == 7
    (work / 'iter_2.pth').write_bytes(b'truncated')
    with pytest.raises(CheckpointError, match='none of the checkpoints in '
                       r'.*work can be read \(iter_4.pth, iter_2.pth\)'):
        RegProxyRunner.from_cfg(cfg)
