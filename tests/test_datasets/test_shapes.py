"""Tests of the synthetic shapes dataset: generator and dataset class."""
import functools
import json
import logging
import os
import os.path as osp
import shutil

import cv2
import numpy as np
import pytest
from mmengine.config import Config
from mmengine.dataset import Compose
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope
from mmseg.registry import DATASETS

import regproxy  # noqa: F401  (registers ShapesDataset)
from regproxy.datasets import ShapesDataset, generate_shapes_dataset
from regproxy.datasets import shapes

CONFIG = osp.join(
    osp.dirname(__file__), '..', '..', 'configs', 'regproxy_shapes',
    'regproxy-t16-d6-sub4+implicit-mid-2+128x128+2400+adamw-poly+shapes.py')


def _files(root):
    """{relative path: bytes} of every file under root."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = osp.join(folder, name)
            with open(path, 'rb') as f:
                out[osp.relpath(path, root)] = f.read()
    return out


def test_same_seed_same_bytes(tmp_path, small_root):
    again = generate_shapes_dataset(
        str(tmp_path / 'again'), num_train=6, num_val=3)
    other = generate_shapes_dataset(
        str(tmp_path / 'other'), num_train=6, num_val=3, seed=1)
    assert _files(again) == _files(small_root)
    assert _files(other).keys() == _files(small_root).keys()
    assert _files(other) != _files(small_root)


def test_layout(small_root):
    for split, num in (('training', 6), ('validation', 3)):
        images = sorted(os.listdir(osp.join(small_root, 'images', split)))
        labels = sorted(
            os.listdir(osp.join(small_root, 'annotations', split)))
        assert images == [f'shapes_{split}_{i:05d}.jpg' for i in range(num)]
        assert labels == [name[:-4] + '.png' for name in images]
    # The temporary folder was renamed into place, none is left behind.
    assert os.listdir(osp.dirname(small_root)) == ['shapes']


def test_images_and_labels(small_root):
    seen = set()
    for split in ('training', 'validation'):
        folder = osp.join(small_root, 'annotations', split)
        for name in os.listdir(folder):
            label = cv2.imread(osp.join(folder, name), cv2.IMREAD_UNCHANGED)
            image = cv2.imread(
                osp.join(small_root, 'images', split, name[:-4] + '.jpg'))
            assert label.dtype == np.uint8 and label.ndim == 2
            assert image.shape == label.shape + (3, )
            assert set(label.shape) <= set(shapes.SIDES)
            seen |= set(np.unique(label).tolist())
    assert seen <= set(range(len(ShapesDataset.METAINFO['classes']))) | {255}
    assert {0, 255} <= seen and len(seen) >= 5


def test_existing_root_is_not_overwritten(small_root):
    with pytest.raises(FileExistsError):
        generate_shapes_dataset(small_root)


def test_race_loser_keeps_winner(tmp_path, small_root, monkeypatch):
    root = str(tmp_path / 'shapes')
    rename = os.rename

    def winner_first(src, dst):
        # Another process finishes its copy just before this one renames.
        shutil.copytree(small_root, dst)
        rename(src, dst)

    monkeypatch.setattr(shapes.os, 'rename', winner_first)
    assert generate_shapes_dataset(root, num_train=2, num_val=1) == root
    assert _files(root) == _files(small_root)
    assert os.listdir(tmp_path) == ['shapes']


def _dataset_cfg(cfg, loader, data_root):
    dataset = cfg[loader].dataset.copy()
    dataset.data_root = data_root
    return dataset


def test_dataset_through_config_pipelines(small_root):
    init_default_scope('mmseg')
    cfg = Config.fromfile(CONFIG)
    train = DATASETS.build(
        _dataset_cfg(cfg, 'train_dataloader', small_root))
    assert len(train) == 6
    for i in range(len(train)):
        sample = train[i]
        # Crops are at most 128 px; the data preprocessor pads smaller ones.
        _, h, w = sample['inputs'].shape
        assert h <= 128 and w <= 128
        assert sample['data_samples'].gt_sem_seg.data.shape == (1, h, w)

    val = DATASETS.build(_dataset_cfg(cfg, 'val_dataloader', small_root))
    assert len(val) == 3
    sample = val[0]
    assert min(sample['inputs'].shape[1:]) == 128
    label = cv2.imread(val.get_data_info(0)['seg_map_path'],
                       cv2.IMREAD_UNCHANGED)
    assert tuple(sample['data_samples'].gt_sem_seg.data.shape[1:]) == \
        label.shape

    tta = Compose(cfg.tta_pipeline)(val.get_data_info(0))
    assert len(tta['inputs']) == 2 * len(cfg.img_ratios)


def test_generated_on_first_use(tmp_path, monkeypatch):
    init_default_scope('mmseg')
    monkeypatch.setattr(
        shapes, 'generate_shapes_dataset',
        functools.partial(generate_shapes_dataset, num_train=2, num_val=1))
    monkeypatch.chdir(tmp_path)  # generated only at the default root
    records = []
    logger = MMLogger.get_current_instance()
    logger.addFilter(lambda record: records.append(record))
    try:
        dataset = ShapesDataset(
            data_root=shapes.DEFAULT_ROOT,
            data_prefix=dict(
                img_path='images/validation',
                seg_map_path='annotations/validation'))
    finally:
        logger.filters.clear()
    # where the data goes is logged, as an absolute path
    (record, ) = [r for r in records if 'generating' in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert f'in {tmp_path / "data" / "shapes"} ' in record.getMessage()
    assert len(dataset) == 1
    assert dataset.metainfo['classes'] == shapes.CLASSES
    assert len(dataset.metainfo['palette']) == len(shapes.CLASSES)
    assert not dataset.metainfo['reduce_zero_label']
    assert (tmp_path / 'data' / 'shapes' / 'images' / 'training').is_dir()


def test_base_config_root_is_where_data_is_generated():
    cfg = Config.fromfile(
        osp.join(osp.dirname(CONFIG), '..', '_base_', 'datasets',
                 'shapes.py'))
    assert cfg.data_root == shapes.DEFAULT_ROOT
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[loader].dataset.data_root == shapes.DEFAULT_ROOT


def test_generator_file_records_version_and_arguments(small_root):
    with open(osp.join(small_root, shapes.GENERATOR_FILE)) as f:
        assert json.load(f) == dict(
            version=shapes.GENERATOR_VERSION, seed=0, num_train=6, num_val=3)
