"""tools/misc/check_dataset.py on a tiny generated shapes dataset, clean
and with planted faults, and its check of one sample."""
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from regproxy.datasets import CheckedLoadAnnotations, generate_shapes_dataset
from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
NUM_CLASSES = 8

CONFIG = """
default_scope = 'mmseg'
custom_imports = dict(imports=['regproxy'], allow_failed_imports=False)
pipeline = [
    dict(type='CheckedLoadImageFromFile'),
    dict(type='CheckedLoadAnnotations', num_classes=8),
    dict(type='PackSegInputs')
]
model = dict(decode_head=dict(num_classes=8))
train_dataloader = dict(dataset=dict(
    type='ShapesDataset', data_root='{root}', pipeline=pipeline,
    data_prefix=dict(img_path='images/training',
                     seg_map_path='annotations/training')))
val_dataloader = dict(dataset=dict(
    type='ShapesDataset', data_root='{root}', pipeline=pipeline,
    data_prefix=dict(img_path='images/validation',
                     seg_map_path='annotations/validation')))
test_dataloader = val_dataloader
"""


check_dataset = load_script('tools/misc/check_dataset.py')
# Worker processes receive check_sample by its module's name, as they do
# from the script's __main__.
sys.modules[check_dataset.__name__] = check_dataset


def check_sample(img_path, seg_map_path, num_classes, reduce_zero_label=False,
                 label_map=None):
    """The tool's check of one sample, decoded as a default pipeline
    decodes it."""
    return check_dataset.check_sample(dict(
        check_dataset.decoder_settings([]), img_path=img_path,
        seg_map_path=seg_map_path, num_classes=num_classes,
        reduce_zero_label=reduce_zero_label, label_map=label_map,
        backend_args=None))


@pytest.fixture(scope='module')
def clean_root(tmp_path_factory) -> Path:
    return Path(generate_shapes_dataset(
        str(tmp_path_factory.mktemp('data') / 'shapes'), num_train=6,
        num_val=3))


def _config(folder: Path, root: Path) -> str:
    path = folder / 'check.py'
    path.write_text(CONFIG.format(root=root))
    return str(path)


def _labels(root: Path, split: str) -> list:
    return [cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            for p in sorted((root / 'annotations' / split).glob('*.png'))]


def test_clean_dataset_passes_with_its_pixel_table(clean_root, tmp_path,
                                                   capsys):
    reports = check_dataset.main(
        [_config(tmp_path, clean_root), '--workers', '1'])
    output = capsys.readouterr().out
    # val and test share one dataset: checked once
    assert set(reports) == {'train', 'val'}
    assert 'test: the same dataset as val; checked once' in output
    for split, folder in (('train', 'training'), ('val', 'validation')):
        labels = _labels(clean_root, folder)
        report = reports[split]
        assert report.samples == len(labels) and report.files == 2 * len(
            labels)
        assert report.problems == []
        expected = sum(np.bincount(x.ravel(), minlength=256) for x in labels)
        assert report.pixels == expected[:NUM_CLASSES].tolist()
        assert report.ignored == expected[255]
        assert report.images == [
            sum(int((x == c).any()) for x in labels)
            for c in range(NUM_CLASSES)
        ]
    assert 'ok: 9 samples in 2 split(s), no problems' in output
    assert 'background' in output and 'ignored (255)' in output


@pytest.fixture
def faulty(clean_root, tmp_path) -> dict:
    """A copy of the dataset with one fault of each kind in training and
    an empty validation split; returns the config and the faulty files."""
    root = tmp_path / 'faulty'
    shutil.copytree(clean_root, root)
    images = sorted((root / 'images' / 'training').glob('*.jpg'))
    labels = sorted((root / 'annotations' / 'training').glob('*.png'))
    data = images[0].read_bytes()
    images[0].write_bytes(data[:len(data) // 2])
    images[1].write_bytes(b'not an image at all')
    label = cv2.imread(str(labels[2]), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(labels[2]), label[:-3, :])
    label = cv2.imread(str(labels[3]), cv2.IMREAD_UNCHANGED)
    label[:2, :5] = 9
    label[-1, -1] = 200
    cv2.imwrite(str(labels[3]), label)
    label = cv2.imread(str(labels[4]), cv2.IMREAD_UNCHANGED)
    colours = np.array([[0, 0, 0]] + [[40 * c, 255 - 30 * c, 20 * c]
                                      for c in range(1, 256)], np.uint8)
    cv2.imwrite(str(labels[4]), colours[label])
    for path in (root / 'images' / 'validation').glob('*'):
        path.unlink()
    return dict(
        config=_config(tmp_path, root),
        truncated=images[0],
        unreadable=images[1],
        size=labels[2],
        values=labels[3],
        colour=labels[4],
        clean=images[5])


def test_planted_faults_are_named_and_fail(faulty, capsys):
    with pytest.raises(SystemExit) as exit_info:
        check_dataset.main([faulty['config'], '--workers', '2'])
    message = str(exit_info.value)
    assert message.startswith('error: ')
    for count_kind in ('1 truncated', '1 unreadable', '1 size mismatch',
                       '1 label values', '1 colour label map',
                       '1 empty split'):
        assert count_kind in message
    lines = capsys.readouterr().out.splitlines()

    def line_of(path) -> str:
        (found, ) = [line for line in lines if f': {path}: ' in line]
        return found.strip()

    assert line_of(faulty['truncated']).startswith('truncated: ')
    assert line_of(faulty['unreadable']).startswith('unreadable: ')
    assert 'not a decodable image' in line_of(faulty['unreadable'])
    size = line_of(faulty['size'])
    assert size.startswith('size mismatch: ')
    label_shape = cv2.imread(str(faulty['size']), cv2.IMREAD_UNCHANGED).shape
    assert f'label map is {label_shape[0]}x{label_shape[1]}' in size
    assert f'{label_shape[0] + 3}x{label_shape[1]}' in size
    values = line_of(faulty['values'])
    assert values.startswith('label values: ')
    assert '9: 10 px' in values and '200: 1 px' in values
    assert '[0, 8) or 255' in values
    colour = line_of(faulty['colour'])
    assert colour.startswith('colour label map: ')
    assert colour.endswith(': 3 channels, shape '
                           f'{cv2.imread(str(faulty["colour"])).shape}; '
                           'expected one channel of class ids: convert the '
                           "colours to class ids with the dataset's palette")
    assert any(line.strip().startswith('empty split: val: ') for line in lines)
    assert not any(str(faulty['clean']) in line for line in lines)


def test_missing_data_root_and_config_mismatch(clean_root, tmp_path, capsys):
    config = _config(tmp_path, clean_root)
    missing = tmp_path / 'nowhere'
    with pytest.raises(SystemExit) as exit_info:
        check_dataset.main([
            config, '--split', 'train', 'val', '--workers', '1',
            '--cfg-options', 'train_dataloader.dataset.type=BaseSegDataset',
            f'train_dataloader.dataset.data_root={missing}',
            'model.decode_head.num_classes=150'
        ])
    assert '1 dataset' in str(exit_info.value)
    assert '1 config' in str(exit_info.value)
    output = capsys.readouterr().out
    assert f"data_root '{missing}'" in output
    assert ("config: val: the decode head's num_classes is 150, the dataset "
            'has 8 classes') in output


WRAPPED = """
_base_ = './check.py'
train_dataloader = dict(dataset=dict(
    _delete_=True, type='ConcatDataset', datasets=[
        dict(type='RepeatDataset', times=3,
             dataset={{_base_.train_dataloader.dataset}}),
        {{_base_.val_dataloader.dataset}}]))
"""


def test_datasets_inside_wrappers_are_checked_once_each(clean_root, tmp_path,
                                                        capsys):
    _config(tmp_path, clean_root)
    wrapped = tmp_path / 'wrapped.py'
    wrapped.write_text(WRAPPED)
    reports = check_dataset.main(
        [str(wrapped), '--split', 'train', '--workers', '1'])
    # Each file once, whatever the wrapper repeats.
    assert reports['train'].samples == 6 + 3
    listed = [line for line in capsys.readouterr().out.splitlines()
              if line.startswith('train: ShapesDataset')]
    assert len(listed) == 2
    assert ', 6 samples, ' in listed[0] and ', 3 samples, ' in listed[1]


@pytest.mark.parametrize('reduce_zero_label, label_map', [
    (False, None),
    (True, None),
    (True, {0: 1, 1: 0, 3: 255}),
])
def test_counts_match_the_checked_loader(tmp_path, reduce_zero_label,
                                         label_map):
    """check_sample's per-class counts equal those of the label map that
    CheckedLoadAnnotations produces with the same dataset settings."""
    rng = np.random.default_rng(0)
    labels = rng.choice([0, 1, 2, 3, 4, 255], size=(37, 53)).astype(np.uint8)
    image = rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / 'a.png'), labels)
    cv2.imwrite(str(tmp_path / 'a.jpg'), image)
    result = check_sample(str(tmp_path / 'a.jpg'), str(tmp_path / 'a.png'),
                          num_classes=5, reduce_zero_label=reduce_zero_label,
                          label_map=label_map)
    loader = CheckedLoadAnnotations(num_classes=5)
    loaded = loader(dict(seg_map_path=str(tmp_path / 'a.png'), seg_fields=[],
                         reduce_zero_label=reduce_zero_label,
                         label_map=label_map))['gt_seg_map']
    counts = np.bincount(loaded.ravel(), minlength=256)
    assert result.problems == []
    assert result.class_pixels.tolist() == counts[:5].tolist()
    assert result.ignored_pixels == counts[255]


def test_out_of_range_values_name_raw_and_mapped_value(tmp_path):
    labels = np.repeat(np.array([0, 5, 9, 255], np.uint8), [3, 4, 5, 6])
    cv2.imwrite(str(tmp_path / 'a.png'), labels.reshape(3, 6))
    cv2.imwrite(str(tmp_path / 'a.jpg'), np.zeros((3, 6, 3), np.uint8))
    result = check_sample(str(tmp_path / 'a.jpg'), str(tmp_path / 'a.png'),
                          num_classes=5, reduce_zero_label=True)
    # 0 and 255 are ignored, 5 -> class 4, 9 -> 8 is out of range
    assert result.class_pixels.tolist() == [0, 0, 0, 0, 4]
    assert result.ignored_pixels == 3 + 6
    (problem, ) = result.problems
    assert problem.kind == 'label values'
    assert problem.message.startswith(
        'values 8 (raw 9): 5 px after reduce_zero_label; expected class ids '
        'in [0, 5) or 255 (ignored)')


def test_sixteen_bit_labels_are_checked_before_uint8(tmp_path):
    labels = np.full((8, 8), 300, np.uint16)
    labels[0, 0] = 1
    cv2.imwrite(str(tmp_path / 'a.png'), labels)
    cv2.imwrite(str(tmp_path / 'a.jpg'), np.zeros((8, 8, 3), np.uint8))
    result = check_sample(str(tmp_path / 'a.jpg'), str(tmp_path / 'a.png'),
                          num_classes=8)
    (problem, ) = result.problems
    assert problem.kind == 'label values' and '300: 63 px' in problem.message


def test_truncated_png_and_jpeg_with_trailing_bytes(tmp_path):
    rng = np.random.default_rng(1)
    cv2.imwrite(str(tmp_path / 'a.jpg'),
                rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    cv2.imwrite(str(tmp_path / 'a.png'),
                rng.integers(0, 8, (40, 50), dtype=np.uint8))
    # Bytes after a JPEG's end marker (as some cameras append) are fine.
    with open(tmp_path / 'a.jpg', 'ab') as file:
        file.write(b'trailing metadata')
    result = check_sample(str(tmp_path / 'a.jpg'), str(tmp_path / 'a.png'),
                          num_classes=8)
    assert result.problems == [] and result.class_pixels.sum() == 40 * 50
    data = (tmp_path / 'a.png').read_bytes()
    (tmp_path / 'a.png').write_bytes(data[:len(data) * 2 // 3])
    result = check_sample(str(tmp_path / 'a.jpg'), str(tmp_path / 'a.png'),
                          num_classes=8)
    (problem, ) = result.problems
    assert (problem.kind, problem.path) == ('truncated',
                                            str(tmp_path / 'a.png'))


def _tagged_jpeg(path: Path, orientation: int = 6) -> Path:
    """A 128x160 JPEG stored unturned, with an EXIF orientation tag."""
    from PIL import Image
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.zeros((128, 160, 3), np.uint8)).save(
        path, exif=exif.tobytes())
    return path


def test_exif_orientation_is_reported(tmp_path):
    """An image whose tag would turn it is named with the tag's value; its
    unturned label map fits it as the loader reads it (no size mismatch)."""
    image = _tagged_jpeg(tmp_path / 'a.jpg')
    labels = tmp_path / 'a.png'
    cv2.imwrite(str(labels), np.zeros((128, 160), np.uint8))
    (problem, ) = check_sample(str(image), str(labels), NUM_CLASSES).problems
    assert str(problem) == (
        f'exif orientation: {image}: EXIF orientation 6 turns or mirrors the '
        'image when shown; the loader reads it as stored (the tag ignored), '
        'as label maps are stored unturned: check that its label map fits '
        'the stored image, then save the image without the tag')
    assert not check_sample(str(_tagged_jpeg(tmp_path / 'b.jpg', 1)),
                            str(labels), NUM_CLASSES).problems


def test_size_mismatch_of_a_turned_label_map_names_the_exif_tag(tmp_path):
    image = _tagged_jpeg(tmp_path / 'a.jpg')
    labels = tmp_path / 'a.png'
    cv2.imwrite(str(labels), np.zeros((160, 128), np.uint8))
    problems = check_sample(str(image), str(labels), NUM_CLASSES).problems
    assert [p.kind for p in problems] == ['exif orientation', 'size mismatch']
    assert str(problems[1]) == (
        f'size mismatch: {labels}: label map is 160x128 (HxW), its image '
        f'{image} 128x160; expected the same size. The image has EXIF '
        'orientation 6 (turned by 90 degrees when shown) and is read as '
        'stored, the tag ignored: the label map looks drawn on the turned '
        'image. Save the image turned (PIL ImageOps.exif_transpose) without '
        'the tag.')
