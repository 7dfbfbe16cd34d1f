"""Checkpoints given as http:// URLs to train.py and test.py, served by a
local HTTP server (the ``http_files`` fixture): every place a user names
weights, a crafted file refused, an unreachable server named."""
import shutil

import pytest
import torch

from tests.test_tools.test_train_test_cli import (  # noqa: F401 fixtures
    _crafted_copy, _test, _train, test_script, tiny_config, trained)


def _served(http_files, trained, name='ckpt.pth') -> str:
    folder, url = http_files
    shutil.copy(trained / 'iter_4.pth', folder / name)
    return url + name


def test_test_py_scores_a_url_like_the_local_file(tiny_config, trained,
                                                  http_files, tmp_path):
    url = _served(http_files, trained)
    local = _test(str(tiny_config), str(trained / 'iter_4.pth'),
                  '--work-dir', str(tmp_path / 'local'))
    remote = _test(str(tiny_config), url, '--work-dir',
                   str(tmp_path / 'remote'))
    assert remote == local and 'mIoU' in remote


@pytest.mark.parametrize('how', ['--load-from', 'load_from'])
def test_train_starts_from_a_url(tiny_config, trained, http_files, tmp_path,
                                 how):
    url = _served(http_files, trained)
    work_dir = tmp_path / 'work'
    source = (['--load-from', url] if how == '--load-from' else
              ['--cfg-options', f'load_from={url}'])
    # lr 0: the saved weights are the loaded ones (BN statistics move)
    _train(str(tiny_config), '--work-dir', str(work_dir), *source,
           '--cfg-options', 'optim_wrapper.optimizer.lr=0',
           'train_cfg.max_iters=1', 'train_cfg.val_interval=10')
    loaded = torch.load(trained / 'iter_4.pth', weights_only=True)
    saved = torch.load(work_dir / 'iter_1.pth', weights_only=True)
    for key, value in loaded['state_dict'].items():
        if not key.endswith(('running_mean', 'running_var',
                             'num_batches_tracked')):
            assert torch.equal(saved['state_dict'][key], value), key


def test_backbone_pretrained_from_a_url(tiny_config, trained, http_files,
                                        tmp_path):
    folder, url = http_files
    weights = torch.load(trained / 'iter_4.pth',
                         weights_only=True)['state_dict']
    backbone = {k[len('backbone.'):]: v for k, v in weights.items()
                if k.startswith('backbone.')}
    torch.save(backbone, folder / 'backbone.pth')
    work_dir = tmp_path / 'work'
    _train(str(tiny_config), '--work-dir', str(work_dir), '--cfg-options',
           f'model.backbone.pretrained={url}backbone.pth',
           'optim_wrapper.optimizer.lr=0', 'train_cfg.max_iters=1',
           'train_cfg.val_interval=10')
    saved = torch.load(work_dir / 'iter_1.pth',
                       weights_only=True)['state_dict']
    for key, value in backbone.items():
        assert torch.equal(saved['backbone.' + key], value), key


def test_crafted_url_is_refused_and_runs_nothing(tiny_config, trained,
                                                 http_files, tmp_path):
    folder, url = http_files
    marker = tmp_path / 'marker'
    _crafted_copy(trained / 'iter_4.pth', folder / 'crafted.pth', marker)
    with pytest.raises(SystemExit) as err:
        test_script.main([str(tiny_config), url + 'crafted.pth',
                          '--work-dir', str(tmp_path / 'w')])
    message = str(err.value)
    assert 'crafted.pth' in message and '--trust-checkpoint' in message
    with pytest.raises(SystemExit) as err:
        _train(str(tiny_config), '--work-dir', str(tmp_path / 'w2'),
               '--load-from', url + 'crafted.pth')
    assert '--trust-checkpoint' in str(err.value)
    assert not marker.exists()


def test_unreachable_url_is_a_failed_download(tiny_config, tmp_path,
                                              monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'hub'))
    url = 'http://127.0.0.1:1/gone.pth'  # port 1: nothing listens
    with pytest.raises(SystemExit) as err:
        test_script.main([str(tiny_config), url, '--work-dir',
                          str(tmp_path / 'w')])
    message = str(err.value)
    assert 'could not download' in message and url in message
    assert 'does not exist' not in message
