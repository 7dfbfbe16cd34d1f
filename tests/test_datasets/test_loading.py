"""Checked image and label loading: unreadable files, label ranges, image
formats, skipping in training."""
import shutil

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmseg.apis import inference_model, init_model
from mmseg.registry import DATASETS

from regproxy.datasets import CheckedLoadAnnotations, CheckedLoadImageFromFile
from tests.test_datasets.test_shapes import CONFIG


def _load_labels(path, reduce_zero_label=False, label_map=None,
                 num_classes=8):
    results = dict(
        seg_map_path=str(path),
        reduce_zero_label=reduce_zero_label,
        label_map=label_map,
        seg_fields=[])
    return CheckedLoadAnnotations(num_classes=num_classes)(results)


def _write(path, array):
    assert cv2.imwrite(str(path), array)
    return path


# Unreadable files ---------------------------------------------------------


@pytest.mark.parametrize('content', [None, b'', b'not an image'])
def test_unreadable_image_names_the_file(tmp_path, content):
    path = tmp_path / 'broken.jpg'
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(OSError, match=f'cannot read image {path}'):
        CheckedLoadImageFromFile()(dict(img_path=str(path)))


@pytest.mark.parametrize('content', [None, b'\x89PNG\r\n\x1a\n truncated'])
def test_unreadable_label_map_names_the_file(tmp_path, content):
    path = tmp_path / 'broken.png'
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(OSError, match=f'cannot read label map {path}'):
        _load_labels(path)


def test_ignore_empty_warns_and_returns_none(tmp_path):
    path = tmp_path / 'broken.png'
    path.write_bytes(b'garbage')
    logger = MMLogger.get_current_instance()
    records = []
    logger.addFilter(lambda record: records.append(record.getMessage()))
    try:
        assert CheckedLoadImageFromFile(ignore_empty=True)(
            dict(img_path=str(path))) is None
        assert CheckedLoadAnnotations(ignore_empty=True)(
            dict(seg_map_path=str(path), seg_fields=[])) is None
    finally:
        logger.filters.clear()
    assert sum(f'{path}' in r and 'skipped' in r for r in records) == 2


def test_training_skips_an_unreadable_sample(small_root, tmp_path):
    """With ignore_empty, mmengine's dataset draws another sample in
    place of a corrupt one; without it, the error names the file."""
    root = shutil.copytree(small_root, tmp_path / 'shapes')
    images = sorted((root / 'images' / 'training').iterdir())
    images[0].write_bytes(b'corrupt')
    cfg = Config.fromfile(CONFIG)
    dataset_cfg = cfg.train_dataloader.dataset
    dataset_cfg.update(data_root=str(root), serialize_data=False)
    dataset = DATASETS.build(dataset_cfg)
    with pytest.raises(OSError, match=str(images[0])):
        dataset[0]
    for transform in dataset_cfg.pipeline[:2]:
        transform.ignore_empty = True
    dataset = DATASETS.build(dataset_cfg)
    sample = dataset[0]['data_samples']
    assert sample.img_path != str(images[0])
    assert sample.gt_sem_seg.data.shape[1:] == sample.img_shape


def test_inference_needs_no_labels():
    """Pipelines that use CheckedLoadAnnotations still serve mmseg's
    inference APIs, which pass no label map."""
    results = dict(img_path='image.jpg')
    assert CheckedLoadAnnotations(num_classes=8)(results) is results


# Label values -------------------------------------------------------------


def test_valid_labels_load_as_uint8(tmp_path):
    labels = np.array([[0, 7, 255], [3, 255, 1]], np.uint8)
    results = _load_labels(_write(tmp_path / 'ok.png', labels))
    np.testing.assert_array_equal(results['gt_seg_map'], labels)
    assert results['gt_seg_map'].dtype == np.uint8
    assert results['seg_fields'] == ['gt_seg_map']


@pytest.mark.parametrize('value', [8, 9, 200])
def test_class_id_out_of_range_names_file_and_value(tmp_path, value):
    path = _write(tmp_path / 'bad.png', np.array([[0, value]], np.uint8))
    with pytest.raises(ValueError, match=rf'{path} has values {value};.*'
                       r'\[0, 8\) or the ignore index 255'):
        _load_labels(path)


def test_16_bit_labels_are_checked_before_uint8(tmp_path):
    """300 would wrap to 44, a valid-looking ADE20K class, in uint8."""
    path = _write(tmp_path / 'wide.png', np.array([[1, 300]], np.uint16))
    with pytest.raises(ValueError, match='has values 299 after reduce'):
        _load_labels(path, reduce_zero_label=True, num_classes=150)
    with pytest.raises(ValueError, match=r'has values 300;.*uint8'):
        _load_labels(path, num_classes=None)


def test_reduce_zero_label_and_label_map(tmp_path):
    """mmseg's conventions: 0 and 255 become ignored, others shift down;
    label_map then renames ids."""
    path = _write(tmp_path / 'ade.png',
                  np.array([[0, 1, 150, 255]], np.uint8))
    reduced = _load_labels(path, reduce_zero_label=True, num_classes=150)
    np.testing.assert_array_equal(reduced['gt_seg_map'], [[255, 0, 149, 255]])
    mapped = _load_labels(path, reduce_zero_label=True, num_classes=150,
                          label_map={0: 255, 149: 0})
    np.testing.assert_array_equal(mapped['gt_seg_map'], [[255, 255, 0, 255]])
    with pytest.raises(ValueError, match='has values 150 after reduce'):
        _load_labels(_write(tmp_path / 'over.png',
                            np.array([[151]], np.uint8)),
                     reduce_zero_label=True, num_classes=150)


def test_colour_label_map_is_refused(tmp_path):
    path = _write(tmp_path / 'colour.png',
                  np.zeros((4, 4, 3), np.uint8) + [0, 0, 200])
    with pytest.raises(ValueError, match=f'{path} is uint8 of shape '
                       r'\(4, 4, 3\); expected one channel'):
        _load_labels(path)


def test_num_classes_must_fit_uint8():
    with pytest.raises(ValueError, match='num_classes must be in'):
        CheckedLoadAnnotations(num_classes=300)


# Image formats ------------------------------------------------------------

GRAY = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (48, 1))  # 48x64
IMAGES = {
    'gray': GRAY,
    'rgba': np.dstack([GRAY, GRAY, GRAY, np.full_like(GRAY, 128)]),
    'gray16': GRAY.astype(np.uint16) * 257,
    'rgb16': np.dstack([GRAY] * 3).astype(np.uint16) * 257,
}


@pytest.mark.parametrize('kind', IMAGES)
def test_image_formats_load_as_8_bit_bgr(tmp_path, kind):
    path = _write(tmp_path / f'{kind}.png', IMAGES[kind])
    results = CheckedLoadImageFromFile()(dict(img_path=str(path)))
    assert results['img'].shape == (48, 64, 3)
    assert results['img'].dtype == np.uint8
    np.testing.assert_array_equal(results['img'][..., 1], GRAY)


@pytest.fixture(scope='module')
def shapes_model():
    cfg = Config.fromfile(CONFIG)
    cfg.model.backbone.num_layers = 2
    cfg.model.backbone.out_indices = (0, 1)
    torch.manual_seed(0)
    return init_model(cfg, device='cpu')


@pytest.mark.parametrize('kind', IMAGES)
def test_inference_on_image_formats(tmp_path, shapes_model, kind):
    path = _write(tmp_path / f'{kind}.png', IMAGES[kind])
    result = inference_model(shapes_model, str(path))
    assert result.pred_sem_seg.data.shape == (1, 48, 64)
    assert torch.isfinite(result.seg_logits.data).all()


# Cut files and sizes that differ -------------------------------------------


def test_truncated_jpeg_is_an_error_naming_the_file(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (64, 80, 3), np.uint8)
    path = _write(tmp_path / 'cut.jpg', image)
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    assert cv2.imread(str(path)) is not None  # cv2 alone fills it with grey
    with pytest.raises(OSError, match=f'cannot read image {path}.*truncated'):
        CheckedLoadImageFromFile()(dict(img_path=str(path)))
    assert CheckedLoadImageFromFile(ignore_empty=True)(
        dict(img_path=str(path))) is None


def test_label_map_of_another_size_names_both_files(tmp_path):
    image = _write(tmp_path / 'a.jpg', np.zeros((40, 50, 3), np.uint8))
    labels = _write(tmp_path / 'a.png', np.zeros((40, 60), np.uint8))
    results = CheckedLoadImageFromFile()(dict(img_path=str(image)))
    results.update(seg_map_path=str(labels), reduce_zero_label=False,
                   seg_fields=[])
    with pytest.raises(ValueError, match=rf'{labels} is 40x60 but its image '
                       rf'{image} is 40x50'):
        CheckedLoadAnnotations(num_classes=8)(results)


def test_scripts_check_the_test_images_mmseg_inferencer_keeps_stock():
    from regproxy.datasets import use_checked_loaders
    cfg = Config.fromfile(CONFIG)
    assert cfg.test_dataloader.dataset.pipeline[0].type == 'LoadImageFromFile'
    use_checked_loaders(cfg, ('test_dataloader', ))
    assert (cfg.test_dataloader.dataset.pipeline[0].type ==
            'CheckedLoadImageFromFile')
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    use_checked_loaders(cfg, ('test_dataloader', ))
    assert cfg.tta_pipeline[0].type == 'CheckedLoadImageFromFile'


# EXIF orientation ---------------------------------------------------------


def _tagged_jpeg(path, orientation=6, shape=(128, 160)):
    """A JPEG with a white top-left corner and an EXIF orientation tag."""
    from PIL import Image
    image = np.zeros((*shape, 3), np.uint8)
    image[:20, :40] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(image).save(path, exif=exif.tobytes(), quality=95)
    return path


@pytest.mark.parametrize('backend', ['cv2', 'pillow'])
def test_exif_orientation_is_ignored_so_labels_stay_aligned(
        tmp_path, backend):
    """mmcv's 'color' flag turns a tagged JPEG (160x128 here); the label map,
    stored unturned, is 128x160: the checked loader reads the image as
    stored, so the two stay aligned."""
    image = _tagged_jpeg(tmp_path / 'a.jpg')
    labels = _write(tmp_path / 'a.png', np.zeros((128, 160), np.uint8))
    results = CheckedLoadImageFromFile(imdecode_backend=backend)(
        dict(img_path=str(image)))
    assert results['img'].shape == (128, 160, 3)
    assert results['img'][5, 5].min() > 200  # the white corner, unturned
    assert results['img'][5, -5].max() < 50
    results.update(seg_map_path=str(labels), reduce_zero_label=False,
                   seg_fields=[])
    assert CheckedLoadAnnotations(num_classes=8)(
        results)['gt_seg_map'].shape == (128, 160)


def test_label_map_with_the_images_sides_swapped_gets_an_exif_hint(
        tmp_path):
    image = _tagged_jpeg(tmp_path / 'a.jpg')
    labels = _write(tmp_path / 'a.png', np.zeros((160, 128), np.uint8))
    results = CheckedLoadImageFromFile()(dict(img_path=str(image)))
    results.update(seg_map_path=str(labels), reduce_zero_label=False,
                   seg_fields=[])
    with pytest.raises(ValueError, match=r'is 160x128 but its image .* is '
                       r'128x160: .*sides are swapped: .*EXIF orientation '
                       r'tag, .*exif_transpose'):
        CheckedLoadAnnotations(num_classes=8)(results)
