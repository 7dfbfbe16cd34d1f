"""Command-line pieces shared by ``train.py``, ``test.py`` and the tools:
mmseg's flags on mmengine's ``DictAction``, ``Config`` and ``Runner``."""
import argparse
import contextlib
import os
import os.path as osp
import re
import sys
from typing import (Any, Iterator, List, NoReturn, Optional, Sequence,
                    Tuple)

import torch
from mmengine.config import Config, DictAction
from mmengine.runner import Runner
from mmengine.utils import import_modules_from_strings
from mmseg.registry import RUNNERS

from .config_keys import check_override_keys, translate_legacy_keys
from .distributed import LAUNCHERS

# Precisions the scripts accept (``--dtype``), by name.
DTYPES = dict(
    float32=torch.float32, bfloat16=torch.bfloat16, float16=torch.float16)


def fail(message: str) -> NoReturn:
    """End a script with ``error: message`` on stderr and exit status 1."""
    sys.exit(f'error: {message}')


def add_trust_checkpoint_arg(parser: argparse.ArgumentParser) -> None:
    """Add ``--trust-checkpoint``: unpickle checkpoint files in full."""
    parser.add_argument(
        '--trust-checkpoint',
        action='store_true',
        help='read checkpoint files in full, not only their weights: '
        'unpickling may run code from the file, so only for files from a '
        'source you trust (sets trust_checkpoint=True in the config)')


def positive_int(value: str) -> int:
    """An argparse type: an integer >= 1."""
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(
            f'expected a positive integer, got {value!r}')
    return int(value)


def add_shape_arg(parser: argparse.ArgumentParser) -> None:
    """Add ``--shape H W`` (positive integers; None when not given)."""
    parser.add_argument(
        '--shape',
        type=positive_int,
        nargs=2,
        metavar=('H', 'W'),
        help='input size (default: the crop size of the config)')


class CfgOptionsAction(DictAction):
    """mmengine's ``DictAction`` that keeps strings whole: mmengine 0.10.7
    deletes every space of a value (``data_root=/data/my dir``). A value in
    matching quotes is that string verbatim, one without commas or brackets
    one value; lists parse as in mmengine. Items that mmengine would mangle
    or fail on with a traceback are usage errors naming the item."""

    # DictAction.__call__ parses each value with self._parse_iterable
    # (mmengine 0.10.7): its one hook, no public one.
    @staticmethod
    def _parse_iterable(val: str) -> Any:
        if not val:
            raise ValueError(
                'the value is empty; write KEY=None for None, or '
                '"KEY=\'\'" for an empty string')
        if len(val) > 1 and val[0] == val[-1] and val[0] in '\'"':
            return val[1:-1]
        if ',' not in val and not val.startswith(('[', '(')):
            return DictAction._parse_int_float_bool(val)
        if re.search(r'[^\s,()\[\]]\s+[^\s,()\[\]]', val):
            raise ValueError(
                f'a list element of {val!r} has a space, which the list '
                'parser would drop; quote the whole value for one string '
                '("KEY=\'a b, c\'")')
        return DictAction._parse_iterable(val)

    def __call__(self, parser, namespace, values, option_string=None):
        for item in values:
            if '=' not in item:
                parser.error(
                    f'{option_string}: expected KEY=VALUE, got {item!r}')
            try:  # mmengine 0.10.7 asserts on unbalanced brackets
                super().__call__(parser, namespace, [item], option_string)
            except (ValueError, AssertionError) as error:
                parser.error(f'{option_string} {item}: {error}')


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Add the options that ``train.py`` and ``test.py`` share."""
    parser.add_argument(
        '--work-dir',
        help='folder for logs and checkpoints (default: work_dir of the '
        'config, else work_dirs/<config name>)')
    parser.add_argument(
        '--cfg-options',
        '--options',  # mmseg 0.x's and the original release's spelling
        nargs='+',
        action=CfgOptionsAction,
        help='override config entries (KEY=VALUE ...): a value keeps its '
        'spaces, a comma makes a list unless quoted ("KEY=\'a,b\'"); an '
        'empty value is KEY=None or "KEY=\'\'"; the last setting wins')
    parser.add_argument(
        '--launcher',
        choices=LAUNCHERS,
        default='none',
        help='how the processes were started (none: a single process)')
    add_trust_checkpoint_arg(parser)
    # torch.distributed.launch passes --local-rank (torch>=2.0) or
    # --local_rank (older) to every process.
    parser.add_argument(
        '--local_rank',
        '--local-rank',
        type=int,
        default=0,
        help=argparse.SUPPRESS)


def parse_with_paths(parser: argparse.ArgumentParser,
                     argv: Optional[Sequence[str]],
                     **paths: str) -> argparse.Namespace:
    """Parse ``argv`` (``sys.argv[1:]`` if None) with ``parser`` and the
    ``paths`` (help text by name, e.g. ``config='config file'``) given as
    positionals (mmseg 1.x) or ``--name`` (the original release), in any
    mix and order. ``--local_rank`` goes to the environment, where mmengine
    reads it (as in mmseg's tools)."""
    parser.add_argument(
        'paths',
        nargs='*',
        metavar=' '.join(name.upper() for name in paths),
        help=', '.join(paths.values()))
    for name, help in paths.items():
        parser.add_argument(f'--{name}', help=f'{help} (or positional)')
    args = parser.parse_intermixed_args(argv)
    for name in paths:
        if getattr(args, name) is None:
            if not args.paths:
                parser.error(f'{name.upper()} is required (positional or '
                             f'--{name})')
            setattr(args, name, args.paths.pop(0))
    if args.paths:
        parser.error(f'unexpected extra path(s): {" ".join(args.paths)}')
    del args.paths
    if 'local_rank' in args:
        os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def load_config(path: str,
                options: Optional[dict] = None,
                notes: Optional[List[str]] = None) -> Config:
    """Load a config file, import its ``custom_imports`` (a list of
    modules or mmengine's ``dict(imports=[...])``) and merge command-line
    overrides, mmseg 0.x keys at their 1.x places; a missing file, a syntax
    error, an override that nothing would read or a dataloader
    ``batch_size`` below 1 ends the script with a message. A dataloader without workers gets
    ``persistent_workers=False``.

    Args:
        path (str): config file.
        options (dict, optional): a ``DictAction`` result.
        notes (list[str], optional): receives what was changed, to log once
            the runner's logger exists.
    """
    notes = [] if notes is None else notes
    try:
        cfg = Config.fromfile(path, import_custom_modules=False)
    except SyntaxError as error:  # mmengine 0.10.7 names no file
        fail(f'{path} (or one of its _base_ files), line {error.lineno}: '
             f'{error.msg}: {(error.text or "").strip()}')
    except OSError as error:  # the file or a _base_ file it names
        fail(f'cannot read config {path}: {error}')
    imports = cfg.get('custom_imports') or dict(imports=[])
    if isinstance(imports, (str, list)):  # mmengine takes the dict only
        imports = cfg.custom_imports = dict(imports=imports)
    try:
        import_modules_from_strings(**imports)
    except ImportError as error:
        fail(f'{path}: custom_imports {imports["imports"]}: {error} (is the '
             'module on PYTHONPATH?)')
    options, translations = translate_legacy_keys(cfg, options or {})
    notes += translations
    try:
        check_override_keys(cfg, options)
    except ValueError as error:
        fail(str(error))
    cfg.merge_from_dict(options)
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(name)
        batch_size = (loader or {}).get('batch_size', 1)
        if type(batch_size) is not int or batch_size < 1:
            fail(f'{path}: {name}.batch_size must be a positive integer, '
                 f'got {batch_size!r}')
        if (loader and loader.get('num_workers') == 0
                and loader.get('persistent_workers')):
            # torch's DataLoader refuses persistent workers without any
            loader.persistent_workers = False
            notes.append(f'{name}.num_workers=0: persistent_workers set '
                         'to False (there are no workers to keep).')
    return cfg


def load_script_config(
        args: argparse.Namespace) -> Tuple[Config, List[str]]:
    """:func:`load_config` with the options that ``train.py`` and
    ``test.py`` share: ``--cfg-options``, ``--work-dir`` (else the
    config's, else ``work_dirs/<config file stem>``, as in mmseg's tools)
    and ``--trust-checkpoint``. Returns the config and notes to log."""
    notes = []
    cfg = load_config(args.config, args.cfg_options, notes=notes)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    if args.trust_checkpoint:
        cfg.trust_checkpoint = True
    return cfg, notes


def error_text(error: BaseException) -> str:
    """The message of ``error``; of one that a DataLoader worker raised,
    the original message alone (torch re-raises it with the worker's
    traceback in front)."""
    # KeyError's str() is the repr of its message
    text = str(error.args[0] if isinstance(error, KeyError) and error.args
               else error)
    if 'DataLoader worker' in text.partition('\n')[0]:
        text = text.rstrip().rpartition('\n')[2].partition(': ')[2]
    return text


@contextlib.contextmanager
def config_errors(cfg: Config, what: str) -> Iterator[None]:
    """Inside, an error of building ``what`` (``'the model'``) from ``cfg``
    (a type that is not registered, an argument its class refuses, a
    folder that cannot be made) ends the script naming the config and the
    cause."""
    try:
        yield
    except (KeyError, OSError, TypeError, ValueError) as error:
        fail(f'{cfg.filename}: cannot build {what}: '
             f'{type(error).__name__}: {error_text(error)}')


def build_runner(cfg: Config,
                 notes: Sequence[str] = (),
                 warnings: Sequence[str] = ()) -> Runner:
    """The runner the config names (``runner_type``), else mmengine's,
    which logs ``notes`` and ``warnings`` (:func:`config_errors`)."""
    with config_errors(cfg, 'the run'):
        runner = RUNNERS.build(cfg) if 'runner_type' in cfg else (
            Runner.from_cfg(cfg))
    for note in notes:
        runner.logger.info(note)
    for warning in warnings:
        runner.logger.warning(warning)
    return runner
