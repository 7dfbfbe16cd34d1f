"""Checkpoints: atomic writes, readable errors for bad or foreign files."""
import os
from types import SimpleNamespace

import pytest
import timm
import torch
from mmengine.fileio import get_file_backend
from mmengine.runner.checkpoint import save_checkpoint
from mmseg.registry import MODELS

from regproxy.engine import (AtomicLocalBackend, CheckpointError,
                             NonFiniteLossHook, load_segmentor_checkpoint,
                             read_checkpoint)


def tiny_segmentor(num_classes=5, embed_dims=32, deit=False, num_layers=2):
    return MODELS.build(
        dict(
            type='PaddedSlideEncoderDecoder',
            backbone=dict(
                type='RegionProxyViT', img_size=64, embed_dims=embed_dims,
                num_layers=num_layers, num_heads=2, out_indices=(0, 1),
                deit=deit),
            decode_head=dict(
                type='ProxyHead', in_channels=(embed_dims, embed_dims),
                channels=16, num_classes=num_classes,
                norm_cfg=dict(type='BN')),
            test_cfg=dict(mode='whole')))


def test_mmengine_writes_checkpoints_atomically(tmp_path, monkeypatch):
    path = tmp_path / 'iter_4.pth'
    assert isinstance(get_file_backend(str(path)), AtomicLocalBackend)
    save_checkpoint({'state_dict': {'w': torch.ones(3)}}, str(path))
    good = path.read_bytes()

    def fail(fd):
        raise OSError('disk full')

    monkeypatch.setattr(os, 'fsync', fail)
    with pytest.raises(OSError, match='disk full'):
        save_checkpoint({'state_dict': {'w': torch.zeros(3)}}, str(path))
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ['iter_4.pth']  # no temporary left


def test_truncated_checkpoint_names_file(tmp_path):
    path = tmp_path / 'latest.pth'
    torch.save({'state_dict': tiny_segmentor().state_dict()}, path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match='latest.pth.*truncated'):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match='does not exist'):
        read_checkpoint(tmp_path / 'missing.pth')


@pytest.mark.parametrize('other, key', [
    (dict(num_classes=7), 'decode_head.mlp.0.0.weight'),
    (dict(embed_dims=64), 'backbone.cls_token'),
    (dict(num_layers=3), 'backbone.layers.2'),
    (dict(deit=True), 'backbone.dist_token'),
])
def test_checkpoint_of_another_model_lists_keys(tmp_path, other, key):
    path = tmp_path / 'other.pth'
    torch.save({'state_dict': tiny_segmentor(**other).state_dict()}, path)
    model = tiny_segmentor()
    with pytest.raises(CheckpointError, match=key):
        load_segmentor_checkpoint(model, path)


def test_non_strict_loads_matching_part(tmp_path):
    source = tiny_segmentor(num_classes=7)
    path = tmp_path / 'other.pth'
    torch.save({'state_dict': source.state_dict()}, path)
    model = tiny_segmentor()
    load_segmentor_checkpoint(model, path, strict=False)
    torch.testing.assert_close(model.backbone.pos_embed,
                               source.backbone.pos_embed)


def test_timm_file_points_to_converter(tmp_path):
    path = tmp_path / 'vit.pth'
    torch.save(
        timm.create_model('vit_tiny_patch16_224').state_dict(), path)
    with pytest.raises(CheckpointError, match='vit2regproxy.py'):
        load_segmentor_checkpoint(tiny_segmentor(), path)


@pytest.mark.parametrize('loss', [float('nan'), float('inf')])
def test_non_finite_loss_stops_with_iteration(loss):
    runner = SimpleNamespace(
        iter=41, work_dir='work_dirs/x', optim_wrapper=None)
    hook = NonFiniteLossHook()
    hook.after_train_iter(runner, 0, outputs=dict(loss=torch.tensor(1.5)))
    with pytest.raises(FloatingPointError, match='at iteration 42'):
        hook.after_train_iter(runner, 0, outputs=dict(loss=torch.tensor(loss)))


@pytest.mark.parametrize('change, message', [
    (dict(decode_head=dict(in_channels=(48, 48))), 'in_channels'),
    (dict(test_cfg=dict(mode='slide', crop_size=(8, 8), stride=(8, 8))),
     'crop_size'),
    (dict(test_cfg=dict(mode='slide', crop_size=(64, 64), stride=(80, 48))),
     r'stride=\(80, 48\) must be between 1 and'),
    (dict(test_cfg=dict(mode='slide', crop_size=(64, 64), stride=(0, 48))),
     'stride'),
    (dict(backbone=dict(out_indices=(1, ))), r'in_index=\(0, 1\) selects'),
])
def test_inconsistent_model_config_fails_at_build(change, message):
    cfg = dict(
        type='PaddedSlideEncoderDecoder',
        backbone=dict(type='RegionProxyViT', img_size=64, embed_dims=32,
                      num_layers=2, num_heads=2, out_indices=(0, 1)),
        decode_head=dict(type='ProxyHead', in_channels=(32, 32), channels=16,
                         num_classes=5, norm_cfg=dict(type='BN')),
        test_cfg=dict(mode='whole'))
    for key, value in change.items():
        cfg[key] = {**cfg[key], **value}
    with pytest.raises(ValueError, match=message):
        MODELS.build(cfg)
