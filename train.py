"""Train a RegionProxy segmentor with mmengine's runner.

Single process::

    python train.py CONFIG [--work-dir DIR] [--amp] [--resume]

Several processes (GPUs, or CPU processes on gloo when there is no GPU)::

    torchrun --nproc_per_node=8 train.py CONFIG --launcher pytorch
    tools/dist_train.sh CONFIG 8

The original release's ``--config CONFIG`` and ``--options k=v`` spellings
are accepted too.
"""
import argparse
import os
import sys
from typing import List, Optional, Sequence, Tuple

import torch
from mmengine.config import Config

from regproxy.utils import (add_common_args, build_runner, check_data_roots,
                            load_config, log_notes, resolve_paths,
                            set_work_dir, setup_launcher)

_AMP_WRAPPERS = ('AmpOptimWrapper', 'AutocastOptimWrapper')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (Sequence[str], optional): arguments; ``sys.argv[1:]`` if None.

    Returns:
        argparse.Namespace: the options, with ``config`` resolved.
    """
    parser = argparse.ArgumentParser(
        description='Train a RegionProxy segmentor')
    parser.add_argument('config', nargs='?', help='config file')
    parser.add_argument(
        '--config',
        dest='config_flag',
        metavar='CONFIG',
        help='config file (instead of the positional)')
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
        help='resume from the latest checkpoint in the work dir (start '
        'afresh when there is none)')
    parser.add_argument(
        '--no-validate',
        action='store_true',
        help='do not evaluate during training')
    parser.add_argument(
        '--gpus',
        type=int,
        help='ignored: the launcher decides the devices (one process each)')
    parser.add_argument('--seed', type=int, help='random seed')
    parser.add_argument(
        '--deterministic',
        action='store_true',
        help='deterministic algorithms (slower)')
    parser.add_argument(
        '--amp',
        action='store_true',
        help='mixed precision: float16 with dynamic loss scaling on CUDA, '
        'bfloat16 on the CPU')
    add_common_args(parser)
    args = parser.parse_args(argv)
    resolve_paths(parser, args, ['config'])
    return args


def enable_amp(cfg: Config) -> str:
    """Switch the optimizer wrapper to mixed precision.

    Args:
        cfg (Config): config to update in place.

    Returns:
        str: what was chosen, to log.
    """
    wrapper = cfg.optim_wrapper
    current = wrapper.get('type', 'OptimWrapper')
    if current in _AMP_WRAPPERS:
        return f'--amp: the config already uses {current}.'
    if current != 'OptimWrapper':
        raise SystemExit(f'--amp needs optim_wrapper.type OptimWrapper, '
                         f'the config has {current}')
    if torch.cuda.is_available():
        wrapper.update(type='AmpOptimWrapper', loss_scale='dynamic')
        return 'AMP: float16 autocast with dynamic loss scaling.'
    # AmpOptimWrapper asserts an accelerator; bfloat16 needs no scaling.
    wrapper.update(type='AutocastOptimWrapper', dtype='bfloat16')
    return 'AMP without CUDA: bfloat16 autocast, no loss scaling.'


def prepare_config(args: argparse.Namespace) -> Tuple[Config, List[str]]:
    """The config with every command-line option applied.

    Args:
        args (argparse.Namespace): parsed options.

    Returns:
        tuple[Config, list[str]]: the config and notes to log.
    """
    cfg = load_config(args.config, args.options, args.cfg_options)
    set_work_dir(cfg, args.work_dir, args.config)
    notes = []
    if args.gpus is not None:
        notes.append(f'--gpus {args.gpus} is ignored: start one process per '
                     'device with --launcher (see tools/dist_train.sh).')
    if args.load_from:
        cfg.load_from = args.load_from
    if args.resume_from:
        cfg.load_from, cfg.resume = args.resume_from, True
    elif args.resume:
        # No load_from: mmengine picks the work dir's latest checkpoint.
        cfg.load_from, cfg.resume = None, True
    if args.no_validate:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    if args.seed is not None or args.deterministic:
        randomness = dict(cfg.get('randomness') or {})
        if args.seed is not None:
            randomness['seed'] = args.seed
        if args.deterministic:
            randomness['deterministic'] = True
        cfg.randomness = randomness
    if args.amp:
        notes.append(enable_amp(cfg))
    return cfg, notes


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Train as the command line says.

    Args:
        argv (Sequence[str], optional): arguments; ``sys.argv[1:]`` if None.
    """
    args = parse_args(argv)
    # mmengine reads the local rank from the environment.
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg, notes = prepare_config(args)
    try:
        check_data_roots(cfg, ('train_dataloader', 'val_dataloader'))
    except FileNotFoundError as err:
        sys.exit(f'error: {err}')
    notes += setup_launcher(cfg, args.launcher)
    runner = build_runner(cfg)
    log_notes(runner, notes)
    runner.train()


if __name__ == '__main__':
    main()
