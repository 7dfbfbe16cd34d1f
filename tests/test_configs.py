"""The ten published configs build the released layouts exactly."""
import json

import pytest
import torch
from mmengine.config import Config
from mmseg.registry import MODELS

from tests.conformance import (CONFIG_DIR, conformance_path, published_config)

PUBLISHED = sorted(
    p.stem for folder in ('regproxy_ade20k', 'regproxy_cityscapes')
    for p in (CONFIG_DIR / folder).glob('*.py'))


def layouts():
    return json.loads(conformance_path('layouts.json').read_text())


def test_published_file_names():
    assert PUBLISHED == sorted(layouts())


def build_on_meta(cfg: Config) -> torch.nn.Module:
    """Build without allocating memory; only names and shapes are used.
    SyncBN stays: it builds, and runs, without a process group."""
    with torch.device('meta'):
        return MODELS.build(cfg.model)


@pytest.mark.parametrize('name', PUBLISHED)
def test_layout_and_params_match_release(name):
    layout = layouts()[name]
    model = build_on_meta(published_config(name))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(layout['keys']) - set(ours))
    unexpected = sorted(set(ours) - set(layout['keys']))
    assert not missing and not unexpected, (missing[:5], unexpected[:5])
    wrong = {k: (ours[k], s) for k, s in layout['keys'].items() if ours[k] != s}
    assert not wrong
    assert sum(p.numel() for p in model.parameters()) == layout['params']


@pytest.mark.parametrize('name', PUBLISHED)
def test_published_recipe(name):
    cfg = published_config(name)
    crop = cfg.crop_size
    assert tuple(cfg.model.backbone.img_size) == crop
    assert cfg.model.test_cfg.mode == 'slide'
    assert tuple(cfg.model.test_cfg.crop_size) == crop
    assert cfg.model.decode_head.norm_cfg.type == 'SyncBN'
    assert cfg.optim_wrapper.optimizer.lr == 6e-5
    assert cfg.train_dataloader.batch_size == 2
    cityscapes = 'cityscapes' in name
    assert cfg.train_cfg.max_iters == (80000 if cityscapes else 160000)
    assert cfg.train_cfg.val_interval == (2000 if cityscapes else 4000)
    schedulers = [s.type for s in cfg.param_scheduler]
    assert schedulers == [
        'LinearLR', 'CosineRestartLR' if '-cr+' in name else 'PolyLR'
    ]
    for loader in ('train_dataloader', 'val_dataloader'):
        dataset = cfg[loader].dataset
        assert dataset.get('reduce_zero_label', False) == (not cityscapes)
    num_classes = [
        t.num_classes for t in cfg.train_pipeline
        if t.type == 'CheckedLoadAnnotations'
    ]
    assert num_classes == [cfg.model.decode_head.num_classes]
