"""test.py --format-only on folders of images without label maps (a
benchmark's test split): one label-map PNG per image, single scale and
--aug-test, one process and two; Cityscapes as label ids."""
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from mmseg.evaluation.metrics import citys_metric, iou_metric
from PIL import Image

from regproxy.datasets import generate_shapes_dataset
from tests.test_tools.test_train_test_cli import (BASE, TINY_CONFIG, _run,
                                                  _test, _train, test_script)

# Cityscapes label ids of train ids 0..7 (road ... traffic sign), as
# cityscapesscripts' labels table gives them.
CITYSCAPES_IDS = (7, 8, 11, 12, 13, 17, 19, 20)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory) -> SimpleNamespace:
    """A tiny config on generated shapes, a 2-iteration checkpoint, and the
    validation images alone in a folder whose path has spaces and
    non-ASCII letters."""
    root = tmp_path_factory.mktemp('unlabelled')
    data = generate_shapes_dataset(
        str(root / 'shapes'), num_train=2, num_val=3)
    config = root / 'tiny_regproxy.py'
    config.write_text(TINY_CONFIG.format(base=BASE, data=data))
    _train(
        str(config), '--work-dir', str(root / 'train'), '--no-validate',
        '--cfg-options', 'train_cfg.max_iters=2',
        'default_hooks.checkpoint.interval=2')
    images = root / 'test images é' / 'release test'
    shutil.copytree(Path(data) / 'images' / 'validation', images)
    return SimpleNamespace(
        config=str(config),
        checkpoint=str(root / 'train' / 'iter_2.pth'),
        data=Path(data),
        images=images)


def _on_folder(folder: Path) -> list:
    """--cfg-options that point the test set at the images in ``folder``."""
    return [
        '--cfg-options', f'test_dataloader.dataset.data_root={folder}',
        "test_dataloader.dataset.data_prefix.img_path=''"
    ]


def _pngs(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.glob('*.png'))}


@pytest.fixture(scope='module')
def labelled_preds(tiny, tmp_path_factory) -> Path:
    """Predictions of the labelled validation set (scored as usual)."""
    work_dir = tmp_path_factory.mktemp('labelled')
    metrics = _test(tiny.config, tiny.checkpoint, '--work-dir',
                    str(work_dir), '--out', str(work_dir / 'preds'))
    assert 'mIoU' in metrics
    return work_dir / 'preds'


def test_format_only_predicts_a_folder_without_labels(
        tiny, labelled_preds, tmp_path):
    assert not list(tiny.images.parent.rglob('*.png'))
    metrics = _test(tiny.config, tiny.checkpoint, '--format-only', '--out',
                    str(tmp_path / 'preds'), '--work-dir', str(tmp_path),
                    *_on_folder(tiny.images))
    assert metrics == {}
    preds = _pngs(tmp_path / 'preds')
    assert list(preds) == [
        f'shapes_validation_{i:05d}.png' for i in range(3)
    ]
    # The same label maps as for the labelled copy of these images.
    assert preds == _pngs(labelled_preds)


def test_format_only_with_aug_test(tiny, tmp_path):
    _test(tiny.config, tiny.checkpoint, '--format-only', '--aug-test',
          '--out', str(tmp_path / 'preds'), '--work-dir', str(tmp_path),
          *_on_folder(tiny.images))
    for image in sorted(tiny.images.glob('*.jpg')):
        pred = cv2.imread(
            str(tmp_path / 'preds' / (image.stem + '.png')),
            cv2.IMREAD_UNCHANGED)
        assert pred.shape == cv2.imread(str(image)).shape[:2]
        assert pred.dtype == np.uint8 and pred.max() < 8


def test_scoring_a_folder_without_labels_names_the_label_folder(
        tiny, tmp_path):
    with pytest.raises(SystemExit) as err:
        _test(tiny.config, tiny.checkpoint, '--work-dir', str(tmp_path),
              '--cfg-options',
              f'test_dataloader.dataset.data_root={tiny.images.parent}',
              'test_dataloader.dataset.data_prefix.img_path=release test')
    message = str(err.value)
    assert str(tiny.images.parent / 'annotations' / 'validation') in message
    assert '--format-only' in message


def _cityscapes_folder(tiny, root: Path) -> Path:
    """The test images as a Cityscapes test split (no gtFine)."""
    city = root / 'leftImg8bit' / 'test' / 'bonn'
    city.mkdir(parents=True)
    for i, image in enumerate(sorted(tiny.images.glob('*.jpg'))):
        cv2.imwrite(
            str(city / f'bonn_{i:06d}_000019_leftImg8bit.png'),
            cv2.imread(str(image)))
    return root


def _cityscapes_args(root: Path) -> list:
    return [
        '--cfg-options', 'test_dataloader.dataset.type=CityscapesDataset',
        f'test_dataloader.dataset.data_root={root}',
        'test_dataloader.dataset.data_prefix.img_path=leftImg8bit/test',
        # eight Cityscapes classes, as many as the tiny shapes model has
        'test_dataloader.dataset.metainfo.classes=[road,sidewalk,building,'
        'wall,fence,pole,vegetation,terrain]'
    ]


def test_cityscapes_format_only_writes_label_ids(tiny, tmp_path,
                                                 monkeypatch):
    # cityscapesscripts is not a dependency: stand in for its label table.
    labels = {i: SimpleNamespace(id=id_) for i, id_ in enumerate(
        CITYSCAPES_IDS)}
    monkeypatch.setattr(citys_metric, 'CSLabels',
                        SimpleNamespace(trainId2label=labels))
    monkeypatch.setattr(citys_metric, 'CSEval', SimpleNamespace())
    root = _cityscapes_folder(tiny, tmp_path / 'cityscapes')
    _test(tiny.config, tiny.checkpoint, '--format-only', '--out',
          str(tmp_path / 'ids'), '--work-dir', str(tmp_path),
          *_cityscapes_args(root))
    # The same images in the shapes layout give the train ids.
    _test(tiny.config, tiny.checkpoint, '--format-only', '--out',
          str(tmp_path / 'train_ids'), '--work-dir', str(tmp_path),
          *_on_folder(tiny.images))
    lut = np.array(CITYSCAPES_IDS, np.uint8)
    for i in range(3):
        # A palette PNG (mode 'P'), as CityscapesMetric writes it.
        ids = np.array(
            Image.open(tmp_path / 'ids' /
                       f'bonn_{i:06d}_000019_leftImg8bit.png'))
        train_ids = cv2.imread(
            str(tmp_path / 'train_ids' / f'shapes_validation_{i:05d}.png'),
            cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(ids, lut[train_ids])


def test_format_only_config_edits(tiny, tmp_path):
    cfg, _ = test_script.prepare_config(
        test_script.parse_args([
            tiny.config, tiny.checkpoint, '--format-only', '--work-dir',
            str(tmp_path), *_cityscapes_args(tmp_path)
        ]))
    assert 'seg_map_path' not in cfg.test_dataloader.dataset.data_prefix
    assert cfg.test_evaluator == dict(
        type='CityscapesMetric',
        output_dir=str(tmp_path / 'format_results'),
        format_only=True,
        keep_results=True)
    # Scoring runs keep the labels (and check them).
    cfg, _ = test_script.prepare_config(
        test_script.parse_args([tiny.config, tiny.checkpoint]))
    assert cfg.test_dataloader.dataset.data_prefix.seg_map_path == \
        'annotations/validation'


def test_cityscapes_format_only_needs_cityscapesscripts(
        tiny, tmp_path, monkeypatch):
    """mmseg's CityscapesMetric says so; the script ends with its words."""
    monkeypatch.setattr(citys_metric, 'CSEval', None)
    root = _cityscapes_folder(tiny, tmp_path / 'cityscapes')
    with pytest.raises(SystemExit, match='pip install cityscapesscripts'):
        _test(tiny.config, tiny.checkpoint, '--format-only', '--work-dir',
              str(tmp_path), *_cityscapes_args(root))


@pytest.mark.slow
def test_two_processes_write_the_same_label_maps(tiny, labelled_preds,
                                                 tmp_path):
    _run([
        '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
        'test.py', tiny.config, tiny.checkpoint, '--launcher', 'pytorch',
        '--format-only', '--out',
        str(tmp_path / 'preds'), '--work-dir',
        str(tmp_path), *_on_folder(tiny.images)
    ])
    assert _pngs(tmp_path / 'preds') == _pngs(labelled_preds)


def test_a_process_that_is_not_the_main_one_finds_the_out_folder(
        tiny, labelled_preds, tmp_path, monkeypatch):
    """mmseg's IoUMetric makes ``output_dir`` in the main process alone;
    the other processes of a run may write before it does (CI, two
    processes): test.py makes the folder in every process."""
    monkeypatch.setattr(iou_metric, 'is_main_process', lambda: False)
    _test(tiny.config, tiny.checkpoint, '--format-only', '--out',
          str(tmp_path / 'preds'), '--work-dir', str(tmp_path),
          *_on_folder(tiny.images))
    assert _pngs(tmp_path / 'preds') == _pngs(labelled_preds)


def test_out_that_is_a_file_is_named(tiny, tmp_path):
    (tmp_path / 'preds').write_text('not a folder')
    with pytest.raises(SystemExit, match=r'--out .*preds: cannot make'):
        _test(tiny.config, tiny.checkpoint, '--format-only', '--out',
              str(tmp_path / 'preds'), '--work-dir', str(tmp_path),
              *_on_folder(tiny.images))
    assert (tmp_path / 'preds').read_text() == 'not a folder'
