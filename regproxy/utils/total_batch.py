"""A training run's total batch against the recipe's (docs/fewer_gpus.md)."""
from typing import List, Optional, Tuple, Union

from mmengine.config import Config

_LOOPS = ('IterBasedTrainLoop', 'AccumulatingTrainLoop')


def plan_total_batch(cfg: Config, processes: int,
                     accumulate: Optional[Union[int, str]],
                     auto_scale_lr: bool) -> Tuple[List[str], List[str]]:
    """Apply ``--accumulate`` and ``--auto-scale-lr`` to the config and
    describe the total batch against the recipe's
    (``auto_scale_lr.base_batch_size``, mmengine's key).

    Args:
        cfg (Config): updated in place: ``auto_scale_lr``,
            ``optim_wrapper.accumulative_counts`` and ``train_cfg.type``
            (:class:`~regproxy.engine.AccumulatingTrainLoop`).
        processes (int): number of training processes.
        accumulate (int | str, optional): micro-batches per optimizer step,
            ``'auto'`` for recipe total / actual total, None for the
            config's (``optim_wrapper.accumulative_counts``, default 1).
        auto_scale_lr (bool): scale the learning rate linearly to the
            total batch (mmengine's ``auto_scale_lr``).

    Returns:
        tuple[list[str], list[str]]: notes and warnings to log.

    Raises:
        ValueError: ``auto`` does not give a whole number, the config lacks
            the recipe total that a flag needs, or its train loop cannot
            accumulate.
    """
    batch_size = cfg.train_dataloader.batch_size
    recipe = (cfg.get('auto_scale_lr') or {}).get('base_batch_size')
    per_step = processes * batch_size
    if (accumulate == 'auto' or auto_scale_lr) and recipe is None:
        raise ValueError(
            '--accumulate auto and --auto-scale-lr need the recipe total '
            'batch: auto_scale_lr = dict(enable=False, base_batch_size=N) '
            'in the config')
    if accumulate == 'auto':
        if recipe % per_step:
            raise ValueError(
                f'--accumulate auto: the recipe total batch {recipe} is not '
                f'a whole multiple of processes x batch_size = {processes} x '
                f'{batch_size} = {per_step}. Choose a batch_size that '
                f'divides it (--cfg-options train_dataloader.batch_size=N), '
                'or give --accumulate K and --auto-scale-lr for the rest')
        accumulate = recipe // per_step
    count = int(accumulate or cfg.optim_wrapper.get('accumulative_counts', 1))
    total = per_step * count
    formula = f'processes x batch_size = {processes} x {batch_size}'
    if count > 1:
        loop = cfg.train_cfg.get('type', 'IterBasedTrainLoop')
        if loop not in _LOOPS:
            raise ValueError(
                f'gradient accumulation needs an iteration-based train loop '
                f'(train_cfg.type IterBasedTrainLoop), the config has {loop}')
        cfg.optim_wrapper.accumulative_counts = count
        cfg.train_cfg.type = 'AccumulatingTrainLoop'
        formula = (f'processes x batch_size x accumulate = {processes} x '
                   f'{batch_size} x {count}')
    notes = [
        f'total batch = {formula} = {total}' +
        (f' (recipe: {recipe})' if recipe else '')
    ]
    if count > 1:
        notes.append(
            f'Gradient accumulation over {count} micro-batches: max_iters, '
            'the schedules, the validation and checkpoint intervals and the '
            'logged iteration count optimizer steps.')
    warnings = []
    if auto_scale_lr or (cfg.get('auto_scale_lr') or {}).get('enable'):
        cfg.auto_scale_lr.enable = True
        # mmengine scales by processes x batch_size / base_batch_size and
        # does not know about accumulation: the base is divided.
        cfg.auto_scale_lr.base_batch_size = recipe / count
        notes.append(f'Learning rate scaled linearly to the total batch: x '
                     f'{total}/{recipe} = {total / recipe:g}.')
    elif recipe and total != recipe:
        keep = 'K (gradient accumulation over K'
        if recipe % per_step == 0 and recipe > per_step:
            keep = f'auto (gradient accumulation over {recipe // per_step}'
        warnings.append(
            f'total batch {total} differs from the recipe\'s {recipe}: this '
            'run trains with another batch than the published model and may '
            f'end worse. Keep the recipe with --accumulate {keep} '
            'micro-batches, the same schedule in optimizer steps), or scale '
            f'the learning rate to the batch with --auto-scale-lr (x '
            f"{total / recipe:g}, mmengine's linear rule).")
    return notes, warnings
