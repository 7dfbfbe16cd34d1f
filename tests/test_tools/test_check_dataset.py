"""tools/misc/check_dataset.py on tiny generated datasets, clean and with
planted faults; its colour lookup scores high where colour gives the class
away, and low on the shapes dataset."""
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from mmengine.config import Config

from regproxy.datasets import generate_shapes_dataset
from regproxy.utils import load_config
from tests.scripts import load_script

NUM_CLASSES = 8
REPO = Path(__file__).resolve().parents[2]
SHAPES_CONFIG = (
    REPO / 'configs' / 'regproxy_shapes' /
    'regproxy-t16-d6-sub4+implicit-mid-2+128x128+2400+adamw-poly+shapes.py')

CONFIG = """
default_scope = 'mmseg'
custom_imports = dict(imports=['regproxy'], allow_failed_imports=False)
train_dataloader = dict(dataset=dict(
    type='ShapesDataset', data_root='{root}', pipeline=[],
    data_prefix=dict(img_path='images/training',
                     seg_map_path='annotations/training')))
val_dataloader = dict(dataset=dict(
    type='ShapesDataset', data_root='{root}', pipeline=[],
    data_prefix=dict(img_path='images/validation',
                     seg_map_path='annotations/validation')))
test_dataloader = val_dataloader
"""
# One folder of PNG images and label maps with four classes.
FOLDER_CONFIG = """
default_scope = 'mmseg'
train_dataloader = dict(dataset=dict(
    type='BaseSegDataset', data_root='{root}', img_suffix='.png',
    reduce_zero_label={reduce_zero_label}, pipeline=[],
    metainfo=dict(classes=('a', 'b', 'c', 'd')),
    data_prefix=dict(img_path='img', seg_map_path='ann')))
"""

check_dataset = load_script('tools/misc/check_dataset.py')


@pytest.fixture(scope='module')
def clean_root(tmp_path_factory) -> Path:
    return Path(generate_shapes_dataset(
        str(tmp_path_factory.mktemp('data') / 'shapes'), num_train=6,
        num_val=3))


def _config(folder: Path, text: str = CONFIG, **fields) -> str:
    path = folder / 'check.py'
    path.write_text(text.format(**fields))
    return str(path)


def _folder_dataset(root: Path, labels: list, reduce_zero_label=False) -> str:
    """A BaseSegDataset folder with one black image per label map; its
    config."""
    for folder in ('img', 'ann'):
        (root / folder).mkdir(parents=True)
    for index, label in enumerate(labels):
        cv2.imwrite(str(root / 'img' / f'{index}.png'),
                    np.zeros(label.shape + (3, ), np.uint8))
        cv2.imwrite(str(root / 'ann' / f'{index}.png'), label)
    return _config(root, FOLDER_CONFIG, root=root,
                   reduce_zero_label=reduce_zero_label)


def test_clean_dataset_passes(clean_root, tmp_path, capsys):
    reports = check_dataset.main([_config(tmp_path, root=clean_root)])
    assert set(reports) == {'train', 'val'}  # test (= val) is not default
    output = capsys.readouterr().out
    for split, folder in (('train', 'training'), ('val', 'validation')):
        labels = list((clean_root / 'annotations' / folder).glob('*'))
        assert reports[split] == (len(labels), [])
    assert output.splitlines()[-1] == ('ok: 9 samples in 2 split(s), no '
                                       'problems')


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
    cv2.imwrite(str(labels[4]), np.stack([label] * 3, axis=-1))
    for path in (root / 'images' / 'validation').glob('*'):
        path.unlink()
    return dict(config=_config(tmp_path, root=root), root=root,
                images=images, labels=labels)


def test_planted_faults_are_named_and_fail(faulty, capsys):
    with pytest.raises(SystemExit) as exit_info:
        check_dataset.main([faulty['config']])
    assert str(exit_info.value) == 'error: 6 problem(s) (listed above)'
    lines = capsys.readouterr().out.splitlines()
    listed = lines[lines.index('6 problem(s):') + 1:]
    assert len(listed) == 6
    images, labels = faulty['images'], faulty['labels']
    size = cv2.imread(str(labels[2]), cv2.IMREAD_UNCHANGED).shape
    colour = cv2.imread(str(labels[4]), cv2.IMREAD_UNCHANGED).shape
    # One line per faulty file, in the checked loaders' words.
    expected = [
        (f'cannot read image {images[0]}: ', 'truncated'),
        (f'cannot read image {images[1]}: ', 'not a decodable image'),
        (f'label map {labels[2]} is {size[0]}x{size[1]} but its image '
         f'{images[2]} is {size[0] + 3}x{size[1]}', 'the same size'),
        (f'label map {labels[3]} has values 9, 200; ', '[0, 8)'),
        (f'label map {labels[4]} is uint8 of shape {colour}; ',
         'one channel'),
    ]
    for line, (start, cause) in zip(listed, expected):
        assert line.startswith(f'  train: {start}') and cause in line, line
    assert listed[5].startswith(
        "  val: cannot list its samples: FileNotFoundError: val_dataloader "
        f"(ShapesDataset): '{faulty['root'] / 'images' / 'validation'}' "
        "holds no '*.jpg' image")
    # The good sample of training is counted.
    assert 'train: 6 samples, 5 problem(s)' in lines


def test_missing_data_root_names_the_path(clean_root, tmp_path, capsys):
    missing = tmp_path / 'nowhere'
    with pytest.raises(SystemExit) as exit_info:
        check_dataset.main([
            _config(tmp_path, root=clean_root), '--split', 'train',
            '--cfg-options', f'train_dataloader.dataset.data_root={missing}'
        ])
    assert str(exit_info.value) == 'error: 1 problem(s) (listed above)'
    assert (f"  train: cannot list its samples: FileNotFoundError: "
            f"train_dataloader (ShapesDataset): '{missing}' does not exist"
            in capsys.readouterr().out)


def test_missing_config_and_split(tmp_path, clean_root, capsys):
    with pytest.raises(SystemExit) as exit_info:
        check_dataset.main([str(tmp_path / 'nothing.py')])
    missing = tmp_path / 'nothing.py'
    assert str(exit_info.value) == (
        f"error: cannot read config {missing}: [Errno 2] No such file or "
        f"directory: '{missing}'")
    config = tmp_path / 'train_only.py'
    config.write_text(CONFIG.format(root=clean_root).split('val_')[0])
    with pytest.raises(SystemExit):
        check_dataset.main([str(config), '--split', 'val'])
    assert '  val: the config has no val_dataloader' in (
        capsys.readouterr().out)


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
    _config(tmp_path, root=clean_root)
    wrapped = tmp_path / 'wrapped.py'
    wrapped.write_text(WRAPPED)
    reports = check_dataset.main([str(wrapped), '--split', 'train'])
    # Each file once, whatever the wrapper repeats.
    assert reports['train'].samples == 6 + 3
    listed = [line for line in capsys.readouterr().out.splitlines()
              if line.startswith('train: ShapesDataset at')]
    assert [line.split(', ')[1] for line in listed] == ['6 samples',
                                                        '3 samples']


@pytest.mark.parametrize('reduce_zero_label', [False, True])
def test_class_ids_follow_the_datasets_reduce_zero_label(
        tmp_path, reduce_zero_label, capsys):
    """Ids 0-4 for 4 classes: 4 is out of range as stored, class 3 once
    reduce_zero_label has made 0 the ignore index."""
    labels = np.repeat(np.array([0, 1, 2, 3, 4, 255], np.uint8),
                       [3, 4, 5, 6, 4, 2]).reshape(4, 6)
    config = _folder_dataset(tmp_path / 'data', [labels], reduce_zero_label)
    if reduce_zero_label:
        assert check_dataset.main([config, '--split', 'train']) == {
            'train': (1, [])}
        return
    with pytest.raises(SystemExit):
        check_dataset.main([config, '--split', 'train'])
    assert 'has values 4; expected in [0, 4)' in capsys.readouterr().out


def test_sixteen_bit_labels_are_checked_before_uint8(tmp_path, capsys):
    """300 would wrap to 44 as uint8: it is reported as 300."""
    labels = np.full((8, 8), 300, np.uint16)
    labels[0, 0] = 1
    config = _folder_dataset(tmp_path / 'data', [labels])
    with pytest.raises(SystemExit):
        check_dataset.main([config, '--split', 'train'])
    assert 'has values 300; expected in [0, 4)' in capsys.readouterr().out


def test_size_mismatch_of_a_turned_label_map_names_the_exif_tag(tmp_path,
                                                                capsys):
    from PIL import Image
    config = _folder_dataset(tmp_path / 'data',
                             [np.zeros((160, 128), np.uint8)])
    exif = Image.Exif()
    exif[0x0112] = 6  # turned by 90 degrees when shown
    image = tmp_path / 'data' / 'img' / '0.png'
    Image.fromarray(np.zeros((128, 160, 3), np.uint8)).save(
        image, exif=exif.tobytes())
    with pytest.raises(SystemExit):
        check_dataset.main([config, '--split', 'train'])
    assert ('is 160x128 but its image '
            f'{image} is 128x160: they must have the same size. Its sides '
            'are swapped: if the image has an EXIF orientation tag') in (
                capsys.readouterr().out)


# Three classes, each its own colour, in one folder read as train and val.
COLOURED_CONFIG = """
default_scope = 'mmseg'
dataset = dict(
    type='BaseSegDataset', data_root='{root}', img_suffix='.png',
    metainfo=dict(classes=('sky', 'grass', 'road')),
    data_prefix=dict(img_path='img', seg_map_path='ann'), pipeline=[])
train_dataloader = dict(dataset=dataset)
val_dataloader = dict(dataset=dataset)
"""


def test_colour_index_quantises_each_channel():
    image = np.array([[[0, 15, 16], [255, 255, 255], [16, 0, 0]]], np.uint8)
    index = check_dataset.colour_index(image, 16)
    assert index.tolist() == [[1, 4095, 256]]
    assert check_dataset.colour_index(image, 1).tolist() == [[0, 0, 0]]


def _coloured_dataset(root: Path) -> Config:
    """Four images whose classes are coded by colour (plus noise)."""
    rng = np.random.default_rng(0)
    colours = np.array([[200, 120, 40], [40, 180, 60], [90, 90, 90]])
    for folder in ('img', 'ann'):
        (root / folder).mkdir()
    for i in range(4):
        label = np.kron(rng.integers(0, 3, (4, 4)), np.ones((8, 8), int))
        noise = rng.integers(-6, 7, label.shape + (3, ))
        image = np.clip(colours[label] + noise, 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / 'img' / f'{i}.png'), image)
        cv2.imwrite(str(root / 'ann' / f'{i}.png'), label.astype(np.uint8))
    return Config.fromstring(COLOURED_CONFIG.format(root=root), '.py')


@pytest.mark.parametrize('levels, low, high', [(16, 100, 100), (1, 0, 30)])
def test_colour_coded_classes_are_found(tmp_path, levels, low, high):
    """16 levels: the lookup is perfect; 1 level: every pixel gets the most
    frequent class."""
    cfg = _coloured_dataset(tmp_path)
    lookup = check_dataset.ColourLookup(levels)
    check_dataset.check_split('train', cfg, lookup.fit)
    check_dataset.check_split('val', cfg, lookup.score)
    assert lookup.fitted == len(lookup.metric.results) == 4
    assert low <= lookup.metrics()['mIoU'] <= high


def test_colour_lookup_reads_datasets_inside_wrappers(tmp_path, capsys):
    """Each dataset of a ConcatDataset is read (here the same one twice)."""
    _coloured_dataset(tmp_path)
    config = tmp_path / 'wrapped.py'
    config.write_text(
        COLOURED_CONFIG.format(root=tmp_path) + 'train_dataloader = dict('
        "dataset=dict(type='ConcatDataset', datasets=[dataset, dataset]))\n")
    check_dataset.main([str(config), '--colour-lookup'])
    assert ('colour lookup (16 levels per RGB channel, fit on 8 training '
            'images, scored on 4 validation images): mIoU 100.00' in
            capsys.readouterr().out)


def test_shapes_colours_do_not_give_the_class_away(tmp_path):
    root = generate_shapes_dataset(
        str(tmp_path / 'shapes'), num_train=100, num_val=40)
    cfg = load_config(str(SHAPES_CONFIG), {
        'train_dataloader.dataset.data_root': root,
        'val_dataloader.dataset.data_root': root})
    lookup = check_dataset.ColourLookup()
    check_dataset.check_split('train', cfg, lookup.fit)
    check_dataset.check_split('val', cfg, lookup.score)
    assert (lookup.fitted, len(lookup.metric.results)) == (100, 40)
    assert 0 < lookup.metrics()['mIoU'] <= 30


def test_colour_lookup_needs_train_and_val(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        check_dataset.main([str(SHAPES_CONFIG), '--split', 'val',
                            '--colour-lookup'])
    assert exit_info.value.code == 2
    assert ('--colour-lookup fits on train and scores on val: --split needs '
            'both' in capsys.readouterr().err)
