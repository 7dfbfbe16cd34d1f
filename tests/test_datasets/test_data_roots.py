"""check_data_roots, generated datasets, and dataset paths given through
--cfg-options (spaces, non-ASCII letters, quotes)."""
import argparse
import shutil
from pathlib import Path

import pytest
from mmengine.config import Config
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from regproxy.datasets import ShapesDataset, check_data_roots
from regproxy.datasets.data_roots import generates_data_at
from regproxy.utils import add_common_args

BASE = Path(__file__).resolve().parents[2] / 'configs' / '_base_'


def test_missing_ade20k_root_names_path_and_preparation(tmp_path):
    cfg = Config.fromfile(BASE / 'datasets' / 'ade20k.py')
    missing = tmp_path / 'nowhere' / 'ADEChallengeData2016'
    cfg.merge_from_dict({'train_dataloader.dataset.data_root': str(missing)})
    with pytest.raises(FileNotFoundError) as err:
        check_data_roots(cfg, ('train_dataloader', 'val_dataloader'))
    message = str(err.value)
    assert str(missing) in message and 'train_dataloader' in message
    assert 'Prepare the dataset as docs/datasets.md describes' in message


def test_unconverted_cityscapes_names_the_converter(tmp_path):
    cfg = Config.fromfile(BASE / 'datasets' / 'cityscapes_768x768.py')
    for folder in ('leftImg8bit/val/city', 'gtFine/val/city'):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / 'leftImg8bit/val/city/a_leftImg8bit.png').touch()
    (tmp_path / 'gtFine/val/city/a_gtFine_labelIds.png').touch()
    cfg.merge_from_dict({'test_dataloader.dataset.data_root': str(tmp_path)})
    with pytest.raises(FileNotFoundError) as err:
        check_data_roots(cfg, ('test_dataloader', ))
    message = str(err.value)
    # the label maps the converter writes (docs/datasets.md)
    assert '/gtFine/val/city/a_gtFine_labelTrainIds.png' in message
    assert 'docs/datasets.md' in message


def test_image_folder_without_images_of_the_suffix(tmp_path):
    cfg = Config.fromfile(BASE / 'datasets' / 'ade20k.py')
    for folder in ('images/validation', 'annotations/validation'):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / 'images/validation/a.png').touch()  # ADE20K images are .jpg
    (tmp_path / 'annotations/validation/a.png').touch()
    cfg.merge_from_dict({'test_dataloader.dataset.data_root': str(tmp_path)})
    with pytest.raises(FileNotFoundError, match=r"holds no '\*\.jpg' image"):
        check_data_roots(cfg, ('test_dataloader', ))
    cfg.merge_from_dict({'test_dataloader.dataset.img_suffix': '.png'})
    check_data_roots(cfg, ('test_dataloader', ))


def test_missing_label_folder_points_to_format_only(tmp_path):
    cfg = Config.fromfile(BASE / 'datasets' / 'ade20k.py')
    (tmp_path / 'images/validation').mkdir(parents=True)
    (tmp_path / 'images/validation/a.jpg').touch()
    cfg.merge_from_dict({'test_dataloader.dataset.data_root': str(tmp_path)})
    with pytest.raises(FileNotFoundError) as err:
        check_data_roots(cfg, ('test_dataloader', ))
    assert str(tmp_path / 'annotations/validation') in str(err.value)
    assert '--format-only' in str(err.value)


class Generated(BaseSegDataset):
    generated_root = 'data/generated_here'


DATASETS.register_module('DataRootsTestGenerated', module=Generated,
                         force=True)


def _generated_cfg(data_root: str) -> Config:
    return Config(
        dict(
            test_dataloader=dict(
                dataset=dict(
                    type='DataRootsTestGenerated', data_root=data_root))))


def test_generated_data_may_be_missing_only_at_its_root(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for root in ('data/generated_here', './data/generated_here/',
                 str(tmp_path / 'data' / 'generated_here')):
        assert generates_data_at(Generated, root)
        check_data_roots(_generated_cfg(root), ('test_dataloader', ))
    elsewhere = 'data/generated_her'  # a typo
    assert not generates_data_at(Generated, elsewhere)
    assert not generates_data_at(BaseSegDataset, 'data/generated_here')
    with pytest.raises(FileNotFoundError) as err:
        check_data_roots(_generated_cfg(elsewhere), ('test_dataloader', ))
    assert f"'{elsewhere}' does not exist" in str(err.value)
    assert "only at 'data/generated_here'" in str(err.value)


def test_shapes_generated_at_the_default_root_only(tmp_path, monkeypatch,
                                                   small_root):
    monkeypatch.chdir(tmp_path)
    cfg = Config.fromfile(BASE / 'datasets' / 'shapes.py')
    check_data_roots(cfg, ('train_dataloader', 'val_dataloader'))
    elsewhere = tmp_path / 'elsewhere'
    cfg.merge_from_dict({'val_dataloader.dataset.data_root': str(elsewhere)})
    with pytest.raises(FileNotFoundError) as err:
        check_data_roots(cfg, ('val_dataloader', ))
    assert str(elsewhere) in str(err.value)
    assert "only at 'data/shapes'" in str(err.value)
    # Built directly, it is mmseg's missing-folder error, and nothing is
    # generated.
    with pytest.raises(FileNotFoundError, match=str(elsewhere)):
        ShapesDataset(data_root=str(elsewhere))
    assert not elsewhere.exists()
    # The default root, once generated, is checked as any other.
    shutil.copytree(small_root, tmp_path / 'data' / 'shapes')
    shutil.rmtree(tmp_path / 'data/shapes/annotations/validation')
    with pytest.raises(FileNotFoundError, match='annotations/validation'):
        check_data_roots(
            Config.fromfile(BASE / 'datasets' / 'shapes.py'),
            ('val_dataloader', ))


# --cfg-options ----------------------------------------------------------


def _cfg_options(*items: str) -> dict:
    parser = argparse.ArgumentParser()
    add_common_args(parser)
    return parser.parse_args(['--cfg-options', *items]).cfg_options


@pytest.mark.parametrize('path', [
    '/data/my dir/x y', '/data/données/Ärger ø', '/data/ two  spaces ',
    'relative dir/sub'
])
def test_paths_keep_spaces_and_letters(path):
    # What the shell passes for: --cfg-options "KEY=/data/my dir/x y"
    options = _cfg_options(f'a.data_root={path}', f'b.data_root={path}')
    assert options == {'a.data_root': path, 'b.data_root': path}


@pytest.mark.parametrize('text,value', [
    ("'/data/a,b'", '/data/a,b'),  # "KEY='/data/a,b'" in the shell
    ('"2024"', '2024'),
    ("'[x y]'", '[x y]'),
    ('4', 4),
    ('0.5', 0.5),
    ('True', True),
    ('None', None),
    ('1,2', [1, 2]),
    ('(64, 64)', (64, 64)),
    ('[a,(b, c)]', ['a', ('b', 'c')]),
])
def test_quoting_and_mmengine_values(text, value):
    assert _cfg_options(f'k={text}') == {'k': value}


@pytest.mark.parametrize('item', ['k=[my dir, b]', 'k=a b,c', 'no_value'])
def test_mangled_values_are_refused(item, capsys):
    with pytest.raises(SystemExit):
        _cfg_options(item)
    error = capsys.readouterr().err
    assert '--cfg-options' in error
    assert ('has a space' in error) or ('expected KEY=VALUE' in error)


def test_path_with_spaces_reaches_the_dataset(tmp_path, small_root):
    root = tmp_path / 'my dir' / 'données x'
    shutil.copytree(small_root, root)
    cfg = Config.fromfile(BASE / 'datasets' / 'shapes.py')
    cfg.merge_from_dict(
        _cfg_options(f'val_dataloader.dataset.data_root={root}'))
    check_data_roots(cfg, ('val_dataloader', ))
    dataset = DATASETS.build(cfg.val_dataloader.dataset)
    assert len(dataset) == 3
    assert dataset.get_data_info(0)['img_path'].startswith(str(root))
