"""tools/analysis/colour_baseline.py: a per-pixel colour lookup scores high
where colour gives the class away, and low on the shapes dataset."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from regproxy.datasets import generate_shapes_dataset
from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
SHAPES_CONFIG = (
    REPO / 'configs' / 'regproxy_shapes' /
    'regproxy-t16-d6-sub4+implicit-mid-2+128x128+2400+adamw-poly+shapes.py')
LEAKY_CONFIG = """
default_scope = 'mmseg'
dataset = dict(
    type='BaseSegDataset',
    data_root='{root}',
    metainfo=dict(classes=('sky', 'grass', 'road')),
    data_prefix=dict(img_path='img', seg_map_path='ann'),
    img_suffix='.png',
    pipeline=[])
train_dataloader = dict(dataset=dataset)
val_dataloader = dict(dataset=dataset)
"""

colour_baseline = load_script('tools/analysis/colour_baseline.py')


def test_colour_index_quantises_each_channel():
    image = np.array([[[0, 15, 16], [255, 255, 255], [16, 0, 0]]], np.uint8)
    index = colour_baseline.colour_index(image, 16)
    assert index.tolist() == [[1, 4095, 256]]
    assert colour_baseline.colour_index(image, 1).tolist() == [[0, 0, 0]]


def test_colour_coded_classes_are_found(tmp_path, monkeypatch):
    """Each class its own colour (plus noise): the lookup is near perfect."""
    rng = np.random.default_rng(0)
    colours = np.array([[200, 120, 40], [40, 180, 60], [90, 90, 90]])
    for folder in ('img', 'ann'):
        (tmp_path / folder).mkdir()
    for i in range(4):
        label = np.kron(rng.integers(0, 3, (4, 4)), np.ones((8, 8), int))
        noise = rng.integers(-6, 7, label.shape + (3, ))
        image = np.clip(colours[label] + noise, 0, 255).astype(np.uint8)
        cv2.imwrite(str(tmp_path / 'img' / f'{i}.png'), image)
        cv2.imwrite(str(tmp_path / 'ann' / f'{i}.png'), label.astype(np.uint8))
    config = tmp_path / 'leaky.py'
    config.write_text(LEAKY_CONFIG.format(root=tmp_path))
    metrics = colour_baseline.main([str(config)])
    assert metrics['mIoU'] == 100.0
    # One level per channel: every pixel gets the most frequent class.
    monkeypatch.setattr(colour_baseline, 'LEVELS', 1)
    assert colour_baseline.main([str(config)])['mIoU'] < 30


def test_datasets_inside_wrappers(tmp_path, capsys):
    """Each dataset of a ConcatDataset is read (here the same one twice)."""
    rng = np.random.default_rng(1)
    for folder in ('img', 'ann'):
        (tmp_path / folder).mkdir()
    for i in range(2):
        label = rng.integers(0, 3, (8, 8)).astype(np.uint8)
        cv2.imwrite(str(tmp_path / 'img' / f'{i}.png'), label[..., None] * 90
                    + np.zeros((1, 1, 3), np.uint8))
        cv2.imwrite(str(tmp_path / 'ann' / f'{i}.png'), label)
    config = tmp_path / 'wrapped.py'
    config.write_text(
        LEAKY_CONFIG.format(root=tmp_path) + 'train_dataloader = dict('
        "dataset=dict(type='ConcatDataset', datasets=[dataset, dataset]))\n")
    assert colour_baseline.main([str(config)])['mIoU'] == 100.0
    assert 'fit on 4 training images, scored on 2 validation images' in \
        capsys.readouterr().out


def test_shapes_colours_do_not_give_the_class_away(tmp_path, capsys):
    root = generate_shapes_dataset(
        str(tmp_path / 'shapes'), num_train=100, num_val=40)
    metrics = colour_baseline.main([
        str(SHAPES_CONFIG), '--cfg-options',
        f'train_dataloader.dataset.data_root={root}',
        f'val_dataloader.dataset.data_root={root}'
    ])
    assert 0 < metrics['mIoU'] <= 30
    assert 'colour lookup (16 levels per RGB channel, fit on 100 training ' \
        'images, scored on 40 validation images)' in capsys.readouterr().out


def test_a_config_without_validation_set_is_named(tmp_path):
    config = tmp_path / 'train_only.py'
    config.write_text(LEAKY_CONFIG.format(root=tmp_path).replace(
        'val_dataloader = dict(dataset=dataset)', ''))
    (tmp_path / 'img').mkdir()
    (tmp_path / 'ann').mkdir()
    cv2.imwrite(str(tmp_path / 'img' / '0.png'), np.zeros((4, 4, 3)))
    cv2.imwrite(str(tmp_path / 'ann' / '0.png'), np.zeros((4, 4)))
    with pytest.raises(SystemExit) as exit_info:
        colour_baseline.main([str(config)])
    assert str(exit_info.value) == 'error: the config has no val_dataloader'
