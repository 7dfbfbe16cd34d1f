"""regproxy.utils.cli: the --shape option of the tools, --cfg-options,
the path arguments of train.py and test.py, and error messages."""
import argparse

import pytest
import torch
from mmengine.config import DictAction

from regproxy.datasets import DataError
from regproxy.utils import (add_common_args, add_shape_arg, error_text,
                            parse_with_paths)


def _parser():
    parser = argparse.ArgumentParser(prog='tool')
    add_shape_arg(parser)
    return parser


def test_shape_is_two_ints_or_none():
    args = _parser().parse_args(['--shape', '512', '1024'])
    assert args.shape == [512, 1024]
    assert _parser().parse_args([]).shape is None


@pytest.mark.parametrize('shape, bad', [(['0', '5'], '0'),
                                        (['5', '-1'], '-1'),
                                        (['5', '2.5'], '2.5')])
def test_a_side_below_one_is_refused(shape, bad, capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(['--shape', *shape])
    assert (f"tool: error: argument --shape: expected a positive integer, "
            f"got '{bad}'") in capsys.readouterr().err


# --cfg-options ---------------------------------------------------------------


def _cfg_options(*items: str) -> dict:
    parser = argparse.ArgumentParser(prog='tool')
    add_common_args(parser)
    return parser.parse_args(['--cfg-options', *items]).cfg_options


def test_a_value_keeps_its_spaces_where_dict_action_drops_them():
    """Why CfgOptionsAction exists: mmengine's DictAction deletes spaces."""
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    plain = parser.parse_args(['--cfg-options', 'data_root=/data/my dir'])
    assert plain.cfg_options == {'data_root': '/data/mydir'}
    assert _cfg_options('data_root=/data/my dir') == {
        'data_root': '/data/my dir'
    }


def test_values_parse_as_in_dict_action():
    assert _cfg_options('a=1', 'b=0.5', 'c=true', 'd=None', 'e=x,y',
                        'f=[1,(2,3)]', 'h=a=b') == {
        'a': 1, 'b': 0.5, 'c': True, 'd': None, 'e': ['x', 'y'],
        'f': [1, (2, 3)], 'h': 'a=b'
    }


def test_options_is_cfg_options_and_the_last_setting_wins():
    parser = argparse.ArgumentParser()
    add_common_args(parser)
    args = parser.parse_args(
        ['--options', 'a=1', 'b=2', '--cfg-options', 'b=3', 'c=4'])
    assert args.cfg_options == {'a': 1, 'b': 3, 'c': 4}


def test_an_item_without_a_value_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit:
        _cfg_options('a=1', 'model.backbone')
    assert exit.value.code == 2
    assert ("tool: error: --cfg-options: expected KEY=VALUE, got "
            "'model.backbone'") in capsys.readouterr().err


@pytest.mark.parametrize('item, message', [
    ('train_cfg.max_iters=[1,2',
     '--cfg-options train_cfg.max_iters=[1,2: Imbalanced brackets exist in '
     '[1,2'),
    ('load_from=', "--cfg-options load_from=: the value is empty; write "
     "KEY=None for None, or \"KEY=''\" for an empty string"),
    ('train_cfg.max_iters=', '--cfg-options train_cfg.max_iters=: the value '
     'is empty'),
])
def test_unbalanced_or_empty_values_are_usage_errors(item, message, capsys):
    """mmengine asserts on the brackets (a traceback) and reads an empty
    value as '', which fails only after the whole build."""
    with pytest.raises(SystemExit) as exit:
        _cfg_options('a=1', item)
    assert exit.value.code == 2
    assert f'tool: error: {message}' in capsys.readouterr().err


def test_empty_string_and_none_are_given_explicitly():
    assert _cfg_options("a=''", 'b=None') == {'a': '', 'b': None}


# Paths as positionals or options ---------------------------------------------


def _paths(argv):
    parser = argparse.ArgumentParser(prog='tool')
    parser.add_argument('--launcher')
    args = parse_with_paths(parser, argv, config='config file',
                            checkpoint='checkpoint')
    return args.config, args.checkpoint


@pytest.mark.parametrize('argv', [
    ['c.py', 'k.pth'],
    ['c.py', '--launcher', 'pytorch', 'k.pth'],
    ['--launcher', 'pytorch', 'c.py', 'k.pth'],
    ['--checkpoint', 'k.pth', 'c.py'],
    ['--config', 'c.py', 'k.pth'],
])
def test_paths_in_any_spelling(argv):
    assert _paths(argv) == ('c.py', 'k.pth')


@pytest.mark.parametrize('argv, message', [
    (['c.py'], 'CHECKPOINT is required (positional or --checkpoint)'),
    (['c.py', 'k.pth', 'x.pth'], 'unexpected extra path(s): x.pth'),
    (['--config', 'c.py', '--checkpoint', 'k.pth', 'x.pth'],
     'unexpected extra path(s): x.pth'),
])
def test_missing_or_extra_paths(argv, message, capsys):
    with pytest.raises(SystemExit):
        _paths(argv)
    assert f'tool: error: {message}' in capsys.readouterr().err


# error messages -------------------------------------------------------------


class _BrokenSamples(torch.utils.data.Dataset):

    def __len__(self):
        return 1

    def __getitem__(self, index):
        raise DataError('label map x.png has values 9')


def test_a_dataloader_workers_error_is_its_own_message():
    """torch re-raises a worker's error with the worker's traceback in
    front; the message is the original one."""
    loader = torch.utils.data.DataLoader(_BrokenSamples(), num_workers=1)
    with pytest.raises(DataError) as error:
        next(iter(loader))
    assert 'Traceback' in str(error.value)
    assert error_text(error.value) == 'label map x.png has values 9'


def test_error_text_of_key_and_os_errors():
    assert error_text(KeyError('X is not in the registry')) == (
        'X is not in the registry')
    assert error_text(FileNotFoundError(2, 'No such file', 'a/b')) == (
        "[Errno 2] No such file: 'a/b'")
