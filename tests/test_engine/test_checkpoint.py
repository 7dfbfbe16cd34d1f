"""Safe reading of checkpoint files, key checks and atomic writing."""
import builtins
import os
import random

import numpy as np
import pytest
import timm
import torch
from mmengine.logging import HistoryBuffer, MessageHub

from regproxy.engine import (CheckpointError, WeightsOnlyCheckpointHook,
                             load_checkpoint_file, load_segmentor_checkpoint,
                             non_finite_weights_allowed, save_checkpoint_file,
                             trusted_checkpoints)
from tests.tiny_models import tiny_segmentor


class WritesMarker:
    """Unpickling it opens (creates) the marker file: code from the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, 'w')


def crafted_checkpoint(path, marker):
    """A checkpoint that looks ordinary but runs code when unpickled."""
    model = tiny_segmentor()
    torch.save({'state_dict': model.state_dict(),
                'meta': {'note': WritesMarker(marker)}}, path)
    return path


def mmengine_training_checkpoint():
    """What mmengine's runner puts in a checkpoint besides weights: message
    hub history buffers (numpy arrays inside), numpy scalars, random
    states."""
    hub = MessageHub.get_instance('test_checkpoint')
    for i in range(3):
        hub.update_scalar('train/loss', 1.0 / (i + 1))
    hub.update_info('best_score', np.float64(0.5), resumed=True)
    return {
        'state_dict': tiny_segmentor().state_dict(),
        'meta': {'iter': 3, 'seed': 7, 'dataset_meta': {'classes': ('a', )}},
        'message_hub': hub.state_dict(),
        'rng_state': {'numpy': np.random.get_state(),
                      'python': random.getstate(),
                      'torch': torch.get_rng_state()},
    }


def test_crafted_pickle_is_refused_with_the_global_and_the_opt_in(tmp_path):
    marker = tmp_path / 'marker'
    path = crafted_checkpoint(tmp_path / 'downloaded.pth', marker)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint_file(path)
    message = str(error.value)
    assert 'downloaded.pth' in message and 'io.open' in message
    assert '--trust-checkpoint' in message
    assert 'trust_checkpoint = True' in message
    assert not marker.exists()
    with pytest.raises(CheckpointError, match='io.open'):
        load_segmentor_checkpoint(tiny_segmentor(), path)
    assert not marker.exists()


def test_trusted_file_is_unpickled_in_full(tmp_path):
    marker = tmp_path / 'marker'
    path = crafted_checkpoint(tmp_path / 'mine.pth', marker)
    with trusted_checkpoints():
        load_checkpoint_file(path)
    assert marker.exists()
    marker.unlink()
    load_checkpoint_file(path, trust=True)
    assert marker.exists()


def test_history_buffers_are_refused_unless_written_as_tensors(tmp_path):
    """mmengine's HistoryBuffers unpickle through getattr: refused. The
    WeightsOnlyCheckpointHook (in every config) writes them as tensors, and
    rebuilds them on loading."""
    checkpoint = mmengine_training_checkpoint()
    raw = tmp_path / 'mmengine.pth'
    torch.save(checkpoint, raw)
    with pytest.raises(CheckpointError, match=(
            'it asks for builtins.getattr, '
            'mmengine.logging.history_buffer.HistoryBuffer.*--trust')):
        load_checkpoint_file(raw)
    assert isinstance(load_checkpoint_file(raw, trust=True)['message_hub'][
        'log_scalars']['train/loss'], HistoryBuffer)

    hook = WeightsOnlyCheckpointHook()
    hook.before_save_checkpoint(None, checkpoint)
    ours = tmp_path / 'iter_3.pth'
    torch.save(checkpoint, ours)
    torch.load(ours, weights_only=True)  # torch alone reads it
    loaded = load_checkpoint_file(ours)
    hook.after_load_checkpoint(None, loaded)
    buffer = loaded['message_hub']['log_scalars']['train/loss']
    assert buffer.current() == pytest.approx(1 / 3)
    assert buffer.mean() == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert loaded['message_hub']['runtime_info']['best_score'] == 0.5
    np.random.set_state(loaded['rng_state']['numpy'])


def test_released_0x_and_imagenet_files_load(tmp_path):
    model = tiny_segmentor()
    released = tmp_path / 'released.pth'
    torch.save({
        'state_dict': model.state_dict(),
        # a generated palette was stored as a numpy array (SAFE_GLOBALS)
        'meta': {'CLASSES': ('wall', 'sky'),
                 'PALETTE': np.array([[1, 2, 3], [4, 5, 6]]),
                 'config': "model = dict(type='EncoderDecoder')",
                 'mmcv_version': '1.4.0', 'iter': 160000},
        'optimizer': torch.optim.AdamW(model.parameters()).state_dict(),
    }, released)
    checkpoint = load_segmentor_checkpoint(tiny_segmentor(), released)
    assert checkpoint['meta']['CLASSES'] == ('wall', 'sky')
    assert checkpoint['meta']['PALETTE'].tolist() == [[1, 2, 3], [4, 5, 6]]
    timm_file = tmp_path / 'deit.pth'
    torch.save({'model': timm.create_model('deit_tiny_patch16_224')
                .state_dict()}, timm_file)
    assert 'blocks.0.attn.qkv.weight' in load_checkpoint_file(
        timm_file)['model']


def test_truncated_or_missing_checkpoint_names_file(tmp_path):
    path = tmp_path / 'latest.pth'
    torch.save({'state_dict': tiny_segmentor().state_dict()}, path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match='latest.pth.*truncated'):
        load_checkpoint_file(path)
    with pytest.raises(CheckpointError, match='does not exist'):
        load_checkpoint_file(tmp_path / 'missing.pth')


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
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=key):
        load_segmentor_checkpoint(model, path)
    for name, value in model.state_dict().items():  # nothing half-loaded
        torch.testing.assert_close(value, before[name])


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
    torch.save(timm.create_model('vit_tiny_patch16_224').state_dict(), path)
    with pytest.raises(CheckpointError, match='vit2regproxy.py'):
        load_segmentor_checkpoint(tiny_segmentor(), path)


def test_saved_file_is_whole_or_absent(tmp_path, monkeypatch):
    path = tmp_path / 'iter_4.pth'
    save_checkpoint_file({'w': torch.ones(3)}, path)
    good = path.read_bytes()
    assert torch.equal(torch.load(path, weights_only=True)['w'],
                       torch.ones(3))

    def fail(fd):
        raise OSError('disk full')

    monkeypatch.setattr(os, 'fsync', fail)
    with pytest.raises(OSError, match='disk full'):
        save_checkpoint_file({'w': torch.zeros(3)}, path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ['iter_4.pth']  # no temporary left


class RunsCommand:
    """Unpickling it runs a shell command: os.system, from a blocked
    module."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f'touch {self.marker}', )


def test_shell_command_in_a_checkpoint_is_refused(tmp_path):
    marker = tmp_path / 'marker'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'meta': RunsCommand(marker)}, path)
    with pytest.raises(CheckpointError,
                       match=rf'refusing to load {path}: it asks for '
                       r'posix.system'):
        load_checkpoint_file(path)
    assert not marker.exists()


def nan_checkpoint(path):
    """A segmentor checkpoint with one NaN and two inf values."""
    weights = tiny_segmentor().state_dict()
    weights['backbone.cls_token'].view(-1)[0] = float('nan')
    weights['decode_head.mlp.0.0.bias'][:2] = float('inf')
    torch.save({'state_dict': weights}, path)
    return path


def test_non_finite_weights_are_refused_naming_the_tensors(tmp_path):
    path = nan_checkpoint(tmp_path / 'broken.pth')
    with pytest.raises(CheckpointError) as error:
        load_segmentor_checkpoint(tiny_segmentor(), path)
    message = str(error.value)
    assert f'checkpoint {path} holds non-finite weights' in message
    assert 'backbone.cls_token (1 NaN, 0 inf of 32 values)' in message
    assert 'decode_head.mlp.0.0.bias (0 NaN, 2 inf of' in message
    assert 'allow_non_finite_weights = True' in message
    weights = load_checkpoint_file(path, allow_non_finite=True)['state_dict']
    assert weights['backbone.cls_token'].isnan().sum() == 1
    with non_finite_weights_allowed():
        load_checkpoint_file(path)


def test_safetensors_by_suffix_or_content_and_written(tmp_path):
    source = tiny_segmentor()
    path = tmp_path / 'model.safetensors'
    save_checkpoint_file({'state_dict': source.state_dict(),
                          'meta': {'iter': 4}}, path)
    model = tiny_segmentor(num_classes=5)
    load_segmentor_checkpoint(model, path)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)
    renamed = tmp_path / 'model.bin'  # found by its header
    renamed.write_bytes(path.read_bytes())
    assert load_checkpoint_file(renamed).keys() == \
        source.state_dict().keys()
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError,
                       match='model.safetensors .500 bytes.*truncated'):
        load_checkpoint_file(path)


def test_directory_is_named_with_the_files_inside(tmp_path):
    for name in ('iter_8.pth', 'iter_4.pth', 'a.safetensors', 'b.pth',
                 'notes.txt'):
        (tmp_path / name).write_bytes(b'')
    with pytest.raises(CheckpointError) as error:
        load_checkpoint_file(tmp_path)
    assert str(error.value) == (
        f'checkpoint {tmp_path} is a directory; give a checkpoint file '
        f'inside it, e.g. {tmp_path}/a.safetensors, {tmp_path}/b.pth, '
        f'{tmp_path}/iter_4.pth')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(CheckpointError, match=r'holds no \*.pth'):
        load_checkpoint_file(tmp_path / 'empty')
