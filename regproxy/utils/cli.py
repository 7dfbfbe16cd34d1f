"""Command-line pieces shared by ``train.py``, ``test.py`` and the tools.

Call flow of ``train.py``/``test.py``::

    parse args -> load_config() -> script-specific edits
        -> check_data_roots() -> setup_launcher() -> build_runner()
        -> log_notes() -> runner.train() / runner.test()
"""
import argparse
import copy
import os.path as osp
import re
import sys
from typing import Any, List, NoReturn, Optional, Sequence

import torch
from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.runner import Runner
from mmseg.registry import RUNNERS

from .config_keys import (ConfigKeyError, check_config_keys,
                          check_override_keys, translate_legacy_keys)
from .distributed import LAUNCHERS

__all__ = [
    'DTYPES', 'fail', 'add_trust_checkpoint_arg', 'add_shape_arg',
    'CfgOptionsAction', 'add_common_args',
    'resolve_paths', 'load_config', 'set_work_dir', 'build_runner',
    'log_notes'
]

# Precisions the scripts accept (``--dtype``), by name.
DTYPES = {
    'float32': torch.float32,
    'bfloat16': torch.bfloat16,
    'float16': torch.float16,
}


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


class _PositiveShape(argparse.Action):
    """Store ``H W``; refuse a side below 1."""

    def __call__(self, parser, namespace, values, option_string=None):
        if min(values) < 1:
            parser.error(f'{option_string} must be positive, got {values}')
        setattr(namespace, self.dest, values)


def add_shape_arg(
        parser: argparse.ArgumentParser,
        help: str = 'input size (default: the crop size of the config)'
) -> None:
    """Add ``--shape H W`` (positive integers; None when not given)."""
    parser.add_argument(
        '--shape',
        type=int,
        nargs=2,
        metavar=('H', 'W'),
        action=_PositiveShape,
        help=help)


# A space between two characters of one list element (not next to a comma or
# bracket): mmengine's list parsing would delete it.
_SPACE_IN_ELEMENT = re.compile(r'[^\s,()\[\]]\s+[^\s,()\[\]]')


class CfgOptionsAction(DictAction):
    """mmengine's ``DictAction`` (``KEY=VALUE`` pairs) that keeps strings
    whole.

    mmengine deletes every space of a value and splits it at commas, so
    ``data_root=/data/my dir`` would become ``/data/mydir``. Here:

    - a value without commas or brackets is one value: an int, float, bool
      or None where it reads as one (as in mmengine), else the string as
      given, spaces and any letters included;
    - a value in matching quotes, as Python sees it, is that string verbatim
      (commas, brackets, digits): ``"KEY='a,b'"`` in the shell;
    - lists and tuples (``a,b``, ``[a,b]``, ``(1,2)``) parse as in mmengine;
      a space inside one of their elements is refused, since mmengine's
      parser would drop it.
    """

    @classmethod
    def parse_value(cls, value: str) -> Any:
        """The config value that the command-line text ``value`` stands for.

        Raises:
            ValueError: a list element holds a space.
        """
        if len(value) >= 2 and value[0] == value[-1] and value[0] in '"\'':
            return value[1:-1]
        if ',' not in value and not value.startswith(('[', '(')):
            return cls._parse_int_float_bool(value)
        if _SPACE_IN_ELEMENT.search(value):
            raise ValueError(
                f'a list element of {value!r} has a space, which the list '
                'parser would drop; quote the whole value to give one '
                'string (e.g. "KEY=\'a b, c\'")')
        return cls._parse_iterable(value)

    def __call__(self,
                 parser: argparse.ArgumentParser,
                 namespace: argparse.Namespace,
                 values: Optional[Sequence[str]],
                 option_string: Optional[str] = None) -> None:
        options = copy.copy(getattr(namespace, self.dest, None) or {})
        for item in values or ():
            key, sep, value = item.partition('=')
            if not sep or not key:
                raise argparse.ArgumentError(
                    self, f'expected KEY=VALUE, got {item!r}')
            try:
                options[key] = self.parse_value(value)
            except ValueError as error:
                raise argparse.ArgumentError(self, f'{key}: {error}')
        setattr(namespace, self.dest, options)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Add the options that ``train.py`` and ``test.py`` share.

    Args:
        parser (argparse.ArgumentParser): parser to extend in place.
    """
    parser.add_argument(
        '--work-dir',
        help='folder for logs and checkpoints (default: work_dir of the '
        'config, else work_dirs/<config name>)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=CfgOptionsAction,
        help='override config entries, e.g. '
        'model.backbone.drop_path_rate=0.2 train_dataloader.batch_size=4; '
        'a value keeps its spaces ("KEY=/data/my dir"), a comma makes a '
        'list unless the value is quoted inside ("KEY=\'a,b\'")')
    parser.add_argument(
        '--options',
        nargs='+',
        action=CfgOptionsAction,
        help='same as --cfg-options (spelling of mmseg 0.x and of the '
        'original release); --cfg-options wins where both set a key')
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


def resolve_paths(parser: argparse.ArgumentParser, args: argparse.Namespace,
                  names: Sequence[str]) -> None:
    """Give every path argument its value from ``--name`` or a positional.

    The original release spelled paths as options (``--config X
    --checkpoint Y``), mmseg 1.x as positionals; any mix is accepted. Each
    ``name`` is a positional with ``nargs='?'`` and ``--name`` stores into
    ``name_flag``. argparse fills positionals in order whatever the flags, so
    the given positionals are re-dealt, in order, to the names without a
    flag.

    Args:
        parser (argparse.ArgumentParser): reports errors.
        args (argparse.Namespace): parsed arguments, updated in place.
        names (Sequence[str]): path arguments in positional order.
    """
    positionals = [getattr(args, n) for n in names if getattr(args, n)]
    for name in names:
        value = getattr(args, f'{name}_flag')
        if value is None and positionals:
            value = positionals.pop(0)
        if value is None:
            parser.error(f'{name.upper()} is required (positional or '
                         f'--{name})')
        setattr(args, name, value)
        delattr(args, f'{name}_flag')
    if positionals:
        parser.error(f'unexpected extra path(s): {" ".join(positionals)}')


def load_config(path: str,
                *overrides: Optional[dict],
                notes: Optional[List[str]] = None) -> Config:
    """Load a config file and merge command-line overrides into it.

    Keys that nothing would read end the script, naming the closest known
    keys: top-level near-misses of runner keys in the file, and override
    keys the config does not take; mmseg 0.x override keys are moved to
    their 1.x places, with a log line (see :mod:`.config_keys`).

    Args:
        path (str): config file.
        *overrides (dict, optional): ``DictAction`` results, merged in order
            (a later one wins on the same key); ``None`` entries are skipped.
        notes (list[str], optional): receives the translation notes, to log
            once the runner's logger exists; None logs them at once.

    Returns:
        Config: the merged config.
    """
    cfg = Config.fromfile(path)
    merged = {}
    try:
        check_config_keys(cfg, path)
        for options in overrides:
            translated, translations = translate_legacy_keys(
                cfg, options or {})
            for note in translations:
                if notes is None:
                    print_log(note, logger='current')
                else:
                    notes.append(note)
            merged.update(translated)
        check_override_keys(cfg, merged)
    except ConfigKeyError as error:
        fail(str(error))
    if merged:
        cfg.merge_from_dict(merged)
    return cfg


def set_work_dir(cfg: Config, work_dir: Optional[str],
                 config_path: str) -> None:
    """Set ``cfg.work_dir``: the flag, then the config, then
    ``work_dirs/<config file stem>``.

    Args:
        cfg (Config): config to update in place.
        work_dir (str, optional): ``--work-dir``.
        config_path (str): config file, whose name is the fallback.
    """
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(config_path))[0])


def build_runner(cfg: Config) -> Runner:
    """Build the runner the config asks for (``runner_type``) or mmengine's.

    Args:
        cfg (Config): the prepared config.

    Returns:
        Runner: the runner.
    """
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def log_notes(runner: Runner, notes: Sequence[str]) -> None:
    """Log what the script changed in the config, one line each.

    Args:
        runner (Runner): supplies the (rank-aware) logger.
        notes (Sequence[str]): messages.
    """
    for note in notes:
        print_log(note, logger=runner.logger)
