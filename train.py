"""Train a RegionProxy segmentor: mmseg's ``tools/train.py`` with the
original release's flags and ours (see the README's "Train and test" and
docs/fewer_gpus.md)."""
import argparse
import inspect
import runpy
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

try:  # a broken install gets a diagnosis instead of a traceback
    import torch
    from mmengine.config import Config
    from mmseg.registry import MODELS

    from regproxy.datasets import (DataError, check_data_roots,
                                   use_checked_loaders)
    from regproxy.engine import CheckpointError, WorkDirBusyError
    from regproxy.utils import (add_common_args, build_runner,
                                end_process_group, error_text, fail,
                                launcher_world_size, load_script_config,
                                parse_with_paths, plan_total_batch,
                                positive_int, setup_launcher)
except ImportError as error:
    sys.exit(runpy.run_path(str(Path(__file__).parent / 'tools' / 'misc' /
                                'check_env.py'))['stack_import_hint'](error))


def _accumulate(value: str):
    """``--accumulate``: 'auto' or a whole number >= 1."""
    return value if value == 'auto' else positive_int(value)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line (``sys.argv[1:]`` if ``argv`` is None)."""
    parser = argparse.ArgumentParser(
        description='Train a RegionProxy segmentor')
    checkpoint = parser.add_mutually_exclusive_group()
    checkpoint.add_argument(
        '--load-from', help='initialise the model from this checkpoint')
    checkpoint.add_argument(
        '--resume-from',
        metavar='FILE',
        help='resume model, optimizer and schedule from this checkpoint')
    checkpoint.add_argument(
        '--resume',
        action='store_true',
        help='resume from the newest readable iter_*.pth in the work dir '
        '(start afresh when there is none)')
    parser.add_argument(
        '--no-validate', action='store_true', help='no validation runs')
    parser.add_argument('--seed', type=int, help='random seed')
    parser.add_argument(
        '--deterministic', action='store_true', help='deterministic (slower)')
    parser.add_argument(
        '--amp',
        action='store_true',
        help='mixed precision: float16 with dynamic loss scaling on CUDA, '
        'bfloat16 on the CPU (often slower than float32: docs/speed.md)')
    parser.add_argument(
        '--accumulate',
        type=_accumulate,
        metavar='auto|K',
        help='gradient accumulation over K micro-batches per optimizer step '
        "(auto: the recipe's total batch / processes x batch_size)")
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the learning rate linearly to the total batch against '
        "the recipe's (auto_scale_lr.base_batch_size)")
    parser.add_argument(
        '--with-cp',
        action='store_true',
        help='activation checkpointing in the backbone: less memory, about '
        'a third more compute per step')
    add_common_args(parser)
    return parse_with_paths(parser, argv, config='config file')


def prepare_config(args: argparse.Namespace) -> Tuple[Config, List[str]]:
    """The config with every command-line option applied, and notes to
    log."""
    cfg, notes = load_script_config(args)
    if args.load_from:
        cfg.load_from = args.load_from
    if args.resume_from:
        cfg.load_from, cfg.resume = args.resume_from, True
    elif args.resume:
        # No load_from: the runner picks the work dir's newest checkpoint.
        cfg.load_from, cfg.resume = None, True
    if args.no_validate:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    if args.seed is not None:
        cfg.randomness = dict(cfg.get('randomness') or {}, seed=args.seed)
    if args.deterministic:
        cfg.randomness = dict(cfg.get('randomness') or {}, deterministic=True)
    if args.amp:
        notes.append(enable_amp(cfg))
    if args.with_cp:
        backbone = cfg.model.backbone
        if 'with_cp' not in inspect.signature(MODELS.get(
                backbone.type)).parameters:
            fail(f'--with-cp: the backbone {backbone.type} has no with_cp '
                 'argument')
        backbone.with_cp = True
        notes.append('Activation checkpointing (--with-cp): backbone '
                     'layers are recomputed in backward.')
    return cfg, notes


def enable_amp(cfg: Config) -> str:
    """Switch ``cfg``'s optimizer wrapper to mixed precision as mmseg's
    ``--amp`` does, without CUDA to bfloat16 (``AmpOptimWrapper`` asserts
    an accelerator). Returns what was chosen, to log."""
    wrapper = cfg.optim_wrapper
    current = wrapper.get('type', 'OptimWrapper')
    if current in ('AmpOptimWrapper', 'AutocastOptimWrapper'):
        return f'--amp: the config already uses {current}.'
    if current != 'OptimWrapper':
        fail(f'--amp needs optim_wrapper.type OptimWrapper, the config has '
             f'{current}')
    if torch.cuda.is_available():
        wrapper.update(type='AmpOptimWrapper', loss_scale='dynamic')
        return 'AMP: float16 autocast with dynamic loss scaling.'
    wrapper.update(type='AutocastOptimWrapper', dtype='bfloat16')
    return 'AMP without CUDA: bfloat16 autocast, no loss scaling.'


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Train as the command line ``argv`` says."""
    args = parse_args(argv)
    cfg, notes = prepare_config(args)
    try:
        check_data_roots(cfg, ('train_dataloader', 'val_dataloader'))
        batch_notes, warnings = plan_total_batch(
            cfg, launcher_world_size(args.launcher), args.accumulate,
            args.auto_scale_lr)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    use_checked_loaders(cfg, ('val_dataloader', ))
    notes += setup_launcher(cfg, args.launcher)
    # Building the runner looks for a readable checkpoint to resume from;
    # FloatingPointError: a NaN or inf loss (NonFiniteLossHook).
    try:
        build_runner(cfg, notes + batch_notes, warnings).train()
    except (CheckpointError, DataError, FloatingPointError,
            WorkDirBusyError) as err:
        fail(error_text(err))


if __name__ == '__main__':
    main()
    end_process_group()  # after the runner is gone
