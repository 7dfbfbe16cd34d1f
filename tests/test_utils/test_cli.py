"""regproxy.utils.cli.add_shape_arg: the --shape option of the tools."""
import argparse

import pytest

from regproxy.utils import add_shape_arg


def _parser():
    parser = argparse.ArgumentParser(prog='tool')
    add_shape_arg(parser)
    return parser


def test_shape_is_two_ints_or_none():
    args = _parser().parse_args(['--shape', '512', '1024'])
    assert args.shape == [512, 1024]
    assert _parser().parse_args([]).shape is None


@pytest.mark.parametrize('shape', [['0', '5'], ['5', '-1']])
def test_a_side_below_one_is_refused(shape, capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(['--shape', *shape])
    got = [int(side) for side in shape]
    assert f'tool: error: --shape must be positive, got {got}' in \
        capsys.readouterr().err
