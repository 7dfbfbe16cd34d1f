"""Command-line pieces shared by ``train.py``, ``test.py`` and the tools.

Call flow of ``train.py``/``test.py``::

    parse args -> load_config() -> script-specific edits
        -> check_data_roots() -> setup_launcher() -> build_runner()
        -> runner.train() / runner.test()
"""
import argparse
import ast
import os.path as osp
import re
import sys
from typing import Any, List, NoReturn, Optional, Sequence

import torch
from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.runner import Runner
from mmengine.utils import import_modules_from_strings
from mmseg.registry import RUNNERS

from .config_keys import (ConfigKeyError, check_config_keys,
                          check_override_keys, check_types,
                          translate_legacy_keys)
from .distributed import LAUNCHERS

__all__ = [
    'DTYPES', 'fail', 'add_trust_checkpoint_arg', 'add_shape_arg',
    'CfgOptionsAction', 'add_common_args', 'parse_with_paths', 'load_config',
    'set_work_dir', 'build_runner'
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


class CfgOptionsAction(DictAction):
    """mmengine's ``DictAction`` that keeps strings whole.

    mmengine 0.10.7 deletes every space of a value, so ``data_root=/data/my
    dir`` would become ``/data/mydir``. Here a value in matching quotes is
    that string verbatim (``"KEY='a,b'"`` in the shell); a value without
    commas or brackets is one value, spaces kept; lists parse as in
    mmengine, and one whose element holds a space, which mmengine would
    drop, is refused. An empty value (``load_from=``, mostly a shell
    variable that was not set) and unbalanced brackets are refused too.
    Bad items are usage errors naming the item, not tracebacks.
    """

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
        if (val.count('[') != val.count(']')
                or val.count('(') != val.count(')')):
            raise ValueError(
                'unbalanced brackets: a list is [a,b] or (a,b); quote the '
                'value for a string ("KEY=\'[a\'")')
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
            try:
                super().__call__(parser, namespace, [item], option_string)
            except ValueError as error:
                parser.error(f'{option_string} {item}: {error}')


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
        '--options',  # mmseg 0.x's and the original release's spelling
        nargs='+',
        action=CfgOptionsAction,
        help='override config entries, e.g. '
        'model.backbone.drop_path_rate=0.2 train_dataloader.batch_size=4; '
        'a value keeps its spaces ("KEY=/data/my dir"), a comma makes a '
        'list unless the value is quoted inside ("KEY=\'a,b\'"); an empty '
        'value is written KEY=None or "KEY=\'\'"; the last setting of a '
        'key wins')
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
    """Parse a command line whose paths are positionals (mmseg 1.x) or
    ``--name`` options (the original release), in any mix and order.

    Each path not given as ``--name`` takes the next positional, in the
    order of ``paths``.

    Args:
        parser (argparse.ArgumentParser): the other arguments; extended.
        argv (Sequence[str], optional): arguments; ``sys.argv[1:]`` if None.
        **paths (str): help text by name, e.g. ``config='config file'``.

    Returns:
        argparse.Namespace: the options, each path set.
    """
    parser.add_argument(
        'paths',
        nargs='*',
        metavar=' '.join(name.upper() for name in paths),
        help=', '.join(paths.values()))
    for name, help in paths.items():
        parser.add_argument(f'--{name}', help=f'{help} (or positional)')
    # intermixed: positionals may also follow options
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
    return args


def load_config(path: str,
                *overrides: Optional[dict],
                notes: Optional[List[str]] = None) -> Config:
    """Load a config file, import its ``custom_imports`` and merge
    command-line overrides into it.

    ``custom_imports`` may be a list of modules or mmengine's
    ``dict(imports=[...], allow_failed_imports=False)``. A syntax error
    ends the script naming the file, line and text; keys that nothing
    would read and types that no registry has end it naming the closest
    names, and mmseg 0.x keys move to their 1.x places (see
    :mod:`.config_keys`). A dataloader left
    without workers gets ``persistent_workers=False``, which torch requires.

    Args:
        path (str): config file.
        *overrides (dict, optional): ``DictAction`` results, merged in order
            (a later one wins on the same key); ``None`` entries are skipped.
        notes (list[str], optional): receives what was changed, to log once
            the runner's logger exists; None logs it at once.

    Returns:
        Config: the merged config.
    """
    changes = []
    try:
        cfg = Config.fromfile(path, import_custom_modules=False)
    except SyntaxError as error:
        fail(_syntax_error(path, error))
    _import_custom_modules(cfg, path)
    merged = {}
    try:
        check_config_keys(cfg, path)
        for options in overrides:
            translated, translations = translate_legacy_keys(
                cfg, options or {})
            changes += translations
            merged.update(translated)
        check_override_keys(cfg, merged)
        cfg.merge_from_dict(merged)
        check_types(cfg)
    except ConfigKeyError as error:
        fail(str(error))
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(name)
        if (loader and loader.get('num_workers') == 0
                and loader.get('persistent_workers')):
            # torch's DataLoader refuses persistent workers without any
            loader.persistent_workers = False
            changes.append(f'{name}.num_workers=0: persistent_workers set '
                           'to False (there are no workers to keep).')
    if notes is None:
        for change in changes:
            print_log(change, logger='current')
    else:
        notes += changes
    return cfg


def _syntax_error(path: str, error: SyntaxError) -> str:
    """A config's syntax error as ``file, line N: message: text``.

    mmengine 0.10.7 parses config files without their names, so its error
    says ``"<unknown>"``; the file and its ``_base_`` files (local ones)
    are parsed again here, with their names.
    """
    with open(path, encoding='utf-8') as f:
        try:
            tree = ast.parse(f.read(), filename=path)
        except SyntaxError as found:
            return (f'{path}, line {found.lineno}: {found.msg}: '
                    f'{(found.text or "").strip()}')
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and getattr(node.targets[0], 'id', None) == '_base_'):
            bases = ast.literal_eval(node.value)
            for base in [bases] if isinstance(bases, str) else bases:
                base = osp.join(osp.dirname(path), base)
                if '::' not in base and osp.isfile(base):
                    message = _syntax_error(base, error)
                    if message != str(error):
                        return message
    return str(error)


def _import_custom_modules(cfg: Config, path: str) -> None:
    """Import the config's ``custom_imports``, as ``Config.fromfile`` does,
    also when given as a list; the config keeps mmengine's dict form."""
    imports = cfg.get('custom_imports')
    if not imports:
        return
    if isinstance(imports, (str, list)):
        imports = cfg.custom_imports = dict(imports=imports)
    try:
        import_modules_from_strings(**imports)
    except ImportError as error:
        fail(f'{path}: custom_imports {imports["imports"]}: {error} (is the '
             'module on PYTHONPATH?)')
    except TypeError as error:
        fail(f'{path}: custom_imports must be a list of module names or '
             f"dict(imports=[...]), got {imports!r} ({error})")


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
    """The runner the config names (``runner_type``), else mmengine's."""
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)
