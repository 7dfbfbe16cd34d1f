"""Train a RegionProxy segmentor with mmengine's runner.

Single process::

    python train.py CONFIG [--work-dir DIR] [--amp] [--resume]

Several processes (GPUs, or CPU processes on gloo when there is no GPU)::

    torchrun --nproc_per_node=8 train.py CONFIG --launcher pytorch
    tools/dist_train.sh CONFIG 8

Fewer GPUs than the recipe's 8: the log compares the total batch with the
recipe's; ``--accumulate auto`` keeps it by gradient accumulation,
``--auto-scale-lr`` scales the learning rate to it instead, and
``--with-cp`` trades compute for activation memory.

The original release's ``--config CONFIG`` and ``--options k=v`` spellings
are accepted too.
"""
import argparse
import inspect
import os
import runpy
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

try:  # a broken install gets a diagnosis instead of a traceback
    import torch
    from mmengine.config import Config
    from mmengine.utils import to_2tuple
    from mmseg.registry import MODELS

    from regproxy.datasets import (check_data_roots, leaf_datasets,
                                   use_checked_loaders)
    from regproxy.engine import CheckpointError, WorkDirBusyError
    from regproxy.utils import (add_common_args, build_runner,
                                end_process_group, fail, launcher_world_size,
                                load_config, parse_with_paths,
                                plan_total_batch, registered, set_work_dir,
                                setup_launcher)
except ImportError as error:
    sys.exit(runpy.run_path(str(Path(__file__).parent / 'tools' / 'misc' /
                                'check_env.py'))['stack_import_hint'](error))

_AMP_WRAPPERS = ('AmpOptimWrapper', 'AutocastOptimWrapper')


def _accumulate(value: str):
    """``--accumulate``: 'auto' or a whole number >= 1."""
    if value == 'auto':
        return value
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(
            f'expected auto or a whole number >= 1, got {value!r}')
    return int(value)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (Sequence[str], optional): arguments; ``sys.argv[1:]`` if None.

    Returns:
        argparse.Namespace: the options, with ``config`` resolved.
    """
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
        '--no-validate',
        action='store_true',
        help='do not evaluate during training')
    # The original release's; refused below with what to run instead.
    parser.add_argument('--gpus', type=int, help=argparse.SUPPRESS)
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
    parser.add_argument(
        '--accumulate',
        type=_accumulate,
        metavar='auto|K',
        help='gradient accumulation over K micro-batches per optimizer step '
        "(auto: the recipe's total batch / processes x batch_size); "
        'max_iters, schedules and intervals count optimizer steps')
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
    args = parse_with_paths(parser, argv, config='config file')
    if args.gpus is not None:
        parser.error(
            f'--gpus {args.gpus}: train.py runs one process per device. To '
            f'train on {args.gpus} GPUs, start {args.gpus} processes: '
            f'tools/dist_train.sh {args.config} {args.gpus} (or torchrun '
            f'--nproc_per_node={args.gpus} train.py {args.config} '
            '--launcher pytorch)')
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
        fail(f'--amp needs optim_wrapper.type OptimWrapper, the config has '
             f'{current}')
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
    notes = []
    cfg = load_config(args.config, args.cfg_options, notes=notes)
    set_work_dir(cfg, args.work_dir, args.config)
    if args.trust_checkpoint:
        cfg.trust_checkpoint = True
    if args.load_from:
        cfg.load_from = args.load_from
    if args.resume_from:
        cfg.load_from, cfg.resume = args.resume_from, True
    elif args.resume:
        # No load_from: mmengine picks the work dir's latest checkpoint.
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
        notes.append(enable_with_cp(cfg))
    check_train_config(cfg)
    return cfg, notes


def check_train_config(cfg: Config) -> None:
    """Refuse a schedule that trains nothing, and a crop that batches
    cannot hold, before anything is built.

    mmengine ends a run of ``max_iters=0`` at once with exit status 0 and no
    checkpoint. mmseg's data preprocessor pads every image of a batch to its
    ``size``; a crop larger than it keeps its size, so a batch mixing it
    with a smaller (padded) image fails in ``torch.stack``.

    Args:
        cfg (Config): the config with every option applied.
    """
    for key in ('max_iters', 'max_epochs'):
        value = (cfg.get('train_cfg') or {}).get(key)
        if value is not None and (type(value) is not int or value < 1):
            fail(f'train_cfg.{key} must be a whole number >= 1, got '
                 f'{value!r}')
    size = (cfg.model.get('data_preprocessor') or {}).get('size')
    if not size:
        return
    top = cfg.train_dataloader.dataset
    for dataset in leaf_datasets(top):
        where = ('train_dataloader.dataset.pipeline' if dataset is top else
                 'the pipeline of a dataset in train_dataloader.dataset')
        for index, step in enumerate(dataset.get('pipeline') or []):
            crop = step.get('crop_size')
            if crop and any(c > s for c, s in zip(to_2tuple(crop), size)):
                fail(f'{where}.{index}.crop_size {tuple(to_2tuple(crop))} '
                     f'({step["type"]}) is larger than '
                     f'model.data_preprocessor.size {tuple(size)}, to which '
                     'every image of a batch is padded: a larger crop '
                     'cannot be stacked with the padded images. Set both '
                     'to the same size')


def enable_with_cp(cfg: Config) -> str:
    """Turn on the backbone's activation checkpointing (``with_cp``).

    Args:
        cfg (Config): config to update in place.

    Returns:
        str: a note to log.
    """
    backbone = cfg.model.backbone
    cls = registered(backbone.type, MODELS)
    if cls is None or 'with_cp' not in inspect.signature(cls).parameters:
        fail(f'--with-cp: the backbone {backbone.type} has no with_cp '
             'argument')
    backbone.with_cp = True
    return ('Activation checkpointing (--with-cp): backbone layers are '
            'recomputed in backward.')


def cpu_has_bf16() -> bool:
    """Whether the CPU has bfloat16 instructions (AVX512-BF16 or AMX), from
    Linux's /proc/cpuinfo (torch 2.12 has no public query); True where it
    cannot be told."""
    try:
        with open('/proc/cpuinfo') as f:
            return bool({'avx512_bf16', 'amx_bf16'} & set(f.read().split()))
    except OSError:
        return True


def amp_warning() -> Optional[str]:
    """Why ``--amp`` slows training down on this machine, if it does."""
    if torch.cuda.is_available() or cpu_has_bf16():
        return None
    return ('--amp on a CPU without bfloat16 instructions (AVX512-BF16 or '
            'AMX): torch emulates bfloat16, and a training step is about 8.5x '
            "slower than in float32 (measured on this project's 2-core AMD "
            'EPYC test machine). Train without --amp here.')


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
        fail(str(err))
    use_checked_loaders(cfg, ('val_dataloader', ))
    notes += setup_launcher(cfg, args.launcher)
    try:
        batch_notes, warnings = plan_total_batch(
            cfg, launcher_world_size(args.launcher), args.accumulate,
            args.auto_scale_lr)
    except ValueError as err:
        fail(str(err))
    if args.amp and amp_warning():
        warnings.append(amp_warning())
    runner = build_runner(cfg)
    for note in notes + batch_notes:
        runner.logger.info(note)
    for warning in warnings:
        runner.logger.warning(warning)
    try:
        runner.train()
    except (CheckpointError, WorkDirBusyError) as err:
        fail(str(err))


if __name__ == '__main__':
    main()
    end_process_group()  # after the runner is gone
