"""Checkpoints over http://: served by a local HTTP server, downloaded into
torch hub's cache and read weights-only, like a local file."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from regproxy.engine import (CheckpointError, RegProxyRunner,
                             load_checkpoint_file, load_segmentor_checkpoint)
from regproxy.models.backbones import RegionProxyViT, TimmRegionProxyViT
from tests.test_engine.test_checkpoint import crafted_checkpoint
from tests.test_engine.test_runner import build_runner
from tests.tiny_models import tiny_segmentor, tiny_segmentor_cfg


def _assert_same_weights(model, source):
    theirs = source.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, theirs[key], rtol=0, atol=0)


def test_url_is_downloaded_once_and_read(http_files, tmp_path):
    folder, url = http_files
    source = tiny_segmentor()
    torch.save({'state_dict': source.state_dict()}, folder / 'model.pth')
    model = tiny_segmentor(num_classes=5)
    load_segmentor_checkpoint(model, url + 'model.pth')
    _assert_same_weights(model, source)
    cached = tmp_path / 'torch_home' / 'hub' / 'checkpoints' / 'model.pth'
    assert cached.read_bytes() == (folder / 'model.pth').read_bytes()
    (folder / 'model.pth').unlink()  # the cache answers from now on
    assert load_checkpoint_file(url + 'model.pth')['state_dict'].keys() == \
        source.state_dict().keys()


def test_runner_load_from_url(http_files, tmp_path):
    folder, url = http_files
    source = tiny_segmentor()
    torch.save({'state_dict': source.state_dict()}, folder / 'model.pth')
    runner = RegProxyRunner(
        model=tiny_segmentor_cfg(), work_dir=str(tmp_path / 'work'),
        load_from=url + 'model.pth', default_scope='mmseg',
        cfg=dict(load_from=url + 'model.pth'))
    runner.load_or_resume()
    _assert_same_weights(runner.model, source)


def test_backbone_pretrained_url(http_files):
    folder, url = http_files
    kwargs = dict(img_size=64, embed_dims=32, num_layers=2, num_heads=2,
                  out_indices=(0, 1))
    source = RegionProxyViT(**kwargs)
    source.init_weights()
    torch.save(source.state_dict(), folder / 'vit.pth')
    backbone = RegionProxyViT(**kwargs, pretrained=url + 'vit.pth')
    backbone.init_weights()
    _assert_same_weights(backbone, source)

    timm_kwargs = dict(img_size=32, out_indices=(0, 1),
                       timm_kwargs=dict(depth=2))
    timm_source = TimmRegionProxyViT('vit_tiny_patch16_224', **timm_kwargs)
    torch.save(timm_source.vit.state_dict(), folder / 'timm.pth')
    timm_backbone = TimmRegionProxyViT('vit_tiny_patch16_224', **timm_kwargs,
                                       pretrained=url + 'timm.pth')
    timm_backbone.init_weights()
    _assert_same_weights(timm_backbone, timm_source)


def test_crafted_file_over_http_is_refused_and_runs_nothing(
        http_files, tmp_path):
    folder, url = http_files
    marker = tmp_path / 'marker'
    crafted_checkpoint(folder / 'downloaded.pth', marker)
    loads = [
        lambda: load_checkpoint_file(url + 'downloaded.pth'),
        lambda: build_runner(tmp_path).load_checkpoint(
            url + 'downloaded.pth'),
        RegionProxyViT(img_size=64, embed_dims=32, num_layers=2,
                       num_heads=2, out_indices=(0, 1),
                       pretrained=url + 'downloaded.pth').init_weights,
    ]
    for load in loads:
        with pytest.raises(CheckpointError) as error:
            load()
        message = str(error.value)
        assert f'downloaded from {url}downloaded.pth' in message
        assert 'it asks for io.open' in message
        assert '--trust-checkpoint' in message
        assert not marker.exists()
    load_checkpoint_file(url + 'downloaded.pth', trust=True)
    assert marker.exists()


def test_corrupt_download_says_to_delete_the_cached_file(http_files,
                                                        tmp_path):
    folder, url = http_files
    (folder / 'cut.pth').write_bytes(b'<html>not a checkpoint</html>')
    cached = tmp_path / 'torch_home' / 'hub' / 'checkpoints' / 'cut.pth'
    with pytest.raises(CheckpointError, match=(
            f'(?s)cannot read checkpoint {cached} \\(downloaded from '
            f'{url}cut.pth\\) .*truncated or corrupt; use an earlier '
            f'checkpoint or delete {cached} to download it again')):
        load_checkpoint_file(url + 'cut.pth')


@pytest.mark.parametrize('where, cause', [
    ('http://127.0.0.1:1/x.pth', 'Connection refused'),  # a closed port
    ('missing.pth', 'HTTP Error 404'),
])
def test_failed_download_names_url_and_cause(http_files, where, cause):
    _, url = http_files
    where = where if '://' in where else url + where
    with pytest.raises(CheckpointError,
                       match=f'could not download checkpoint {where} .*'
                       f'{cause}'):
        load_checkpoint_file(where)


def test_model_zoo_names_need_trust():
    with pytest.raises(CheckpointError, match=(
            'refusing to load open-mmlab://resnet50_v1c: mmengine reads '
            'model-zoo names by unpickling in full.*--trust-checkpoint')):
        load_checkpoint_file('open-mmlab://resnet50_v1c')


def test_import_leaves_mmengines_checkpoint_loader_as_it_is():
    code = (
        'from mmengine.runner.checkpoint import CheckpointLoader\n'
        'before = dict(CheckpointLoader._schemes)\n'
        'import regproxy\n'
        'assert dict(CheckpointLoader._schemes) == before\n'
        "assert before['http://'].__module__ == 'mmengine.runner.checkpoint'\n"
        "assert before[''].__module__ == 'mmengine.runner.checkpoint'\n")
    subprocess.run([sys.executable, '-c', code], check=True,
                   cwd=Path(__file__).resolve().parents[2])


def test_safetensors_url_as_load_from_and_pretrained(http_files, tmp_path):
    from safetensors.torch import save_file
    folder, url = http_files
    source = tiny_segmentor()
    save_file(source.state_dict(), folder / 'model.safetensors')
    runner = RegProxyRunner(
        model=tiny_segmentor_cfg(), work_dir=str(tmp_path / 'work'),
        load_from=url + 'model.safetensors', default_scope='mmseg',
        cfg=dict(load_from=url + 'model.safetensors'))
    runner.load_or_resume()
    _assert_same_weights(runner.model, source)
    kwargs = dict(img_size=64, embed_dims=32, num_layers=2, num_heads=2,
                  out_indices=(0, 1))
    vit = RegionProxyViT(**kwargs)
    vit.init_weights()
    save_file(vit.state_dict(), folder / 'vit.safetensors')
    backbone = RegionProxyViT(**kwargs, pretrained=url + 'vit.safetensors')
    backbone.init_weights()
    _assert_same_weights(backbone, vit)
