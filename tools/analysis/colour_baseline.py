"""How far a per-pixel colour lookup gets on a config's dataset.

    python tools/analysis/colour_baseline.py CONFIG [--levels 16]
        [--cfg-options KEY=VALUE ...]

The skeptic's baseline for a segmentation dataset: quantise every RGB channel
to ``--levels`` levels, count on the training pixels how often each quantised
colour carries each class, predict for every validation pixel the most
frequent class of its colour (colours never seen in training get the most
frequent class overall), and score the predictions with mmseg's ``IoUMetric``
(per-class table and mIoU). A high score means the classes can be told apart
by colour alone, and a model's mIoU says little about regions or shapes.

The images and labels are read as the config's datasets list them
(``train_dataloader.dataset`` and ``val_dataloader.dataset``, those inside
wrappers too, with the dataset's ``reduce_zero_label`` and ``label_map``),
at their stored size.
"""
import argparse
import sys
from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from mmseg.evaluation import IoUMetric
from mmseg.registry import DATASETS

from regproxy.datasets import leaf_datasets

IGNORE_INDEX = 255
# Read each sample at its stored size: image, then labels as mmseg loads them.
READ_PIPELINE = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Score a per-pixel colour lookup (fit on the training '
        'set, scored on the validation set) with mmseg\'s IoUMetric.')
    parser.add_argument('config', help='config file')
    parser.add_argument(
        '--levels',
        type=int,
        default=16,
        help='quantisation levels per RGB channel (default: 16)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, e.g. '
        'train_dataloader.dataset.data_root=PATH')
    args = parser.parse_args(argv)
    if not 1 <= args.levels <= 256:
        parser.error(f'--levels must be in [1, 256], got {args.levels}')
    return args


def colour_index(image: np.ndarray, levels: int) -> np.ndarray:
    """(H, W) int64 index in ``[0, levels**3)`` of each pixel's quantised
    colour.

    Args:
        image (np.ndarray): (H, W, 3) uint8 image (any channel order; the
            index is a bijection of the channel triple).
        levels (int): quantisation levels per channel.
    """
    q = image.astype(np.int64) * levels // 256
    return (q[..., 0] * levels + q[..., 1]) * levels + q[..., 2]


def build_datasets(cfg: Config, loader: str) -> list:
    """The datasets of ``cfg[loader]`` (those inside wrappers too), reading
    images and labels with :data:`READ_PIPELINE`."""
    if not cfg.get(loader):
        sys.exit(f'error: the config has no {loader}')
    return [
        DATASETS.build(dict(dataset, pipeline=READ_PIPELINE))
        for dataset in leaf_datasets(cfg[loader]['dataset'])
    ]


def _samples(datasets: list) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """(image, label map) pairs of ``datasets``, in order."""
    for dataset in datasets:
        for i in range(len(dataset)):
            sample = dataset[i]
            yield sample['img'], sample['gt_seg_map']


def fit_colour_lookup(datasets: list, num_classes: int,
                      levels: int) -> np.ndarray:
    """The most frequent class of every quantised colour.

    Args:
        datasets (list): yield ``img`` and ``gt_seg_map`` per sample.
        num_classes (int): number of classes.
        levels (int): quantisation levels per channel.

    Returns:
        np.ndarray: (levels**3, ) int64 class per colour index; colours
        without a labelled training pixel get the most frequent class.
    """
    counts = np.zeros(levels**3 * num_classes, np.int64)
    for image, label in _samples(datasets):
        keep = label != IGNORE_INDEX
        pairs = colour_index(image, levels)[keep] * num_classes + label[keep]
        counts += np.bincount(pairs, minlength=counts.size)
    counts = counts.reshape(levels**3, num_classes)
    table = counts.argmax(axis=1)
    table[counts.sum(axis=1) == 0] = counts.sum(axis=0).argmax()
    return table


def score_colour_lookup(datasets: list, table: np.ndarray,
                        levels: int) -> Dict[str, float]:
    """mmseg's ``IoUMetric`` of the lookup's predictions on ``datasets``.

    Args:
        datasets (list): yield ``img`` and ``gt_seg_map`` per sample; the
            first one's ``metainfo['classes']`` names the classes.
        table (np.ndarray): from :func:`fit_colour_lookup`.
        levels (int): quantisation levels per channel.

    Returns:
        dict[str, float]: ``aAcc``, ``mIoU`` and ``mAcc`` in percent (the
        per-class table is logged).
    """
    metric = IoUMetric(iou_metrics=['mIoU'], ignore_index=IGNORE_INDEX)
    metric.dataset_meta = datasets[0].metainfo
    num_classes = len(metric.dataset_meta['classes'])
    for image, label in _samples(datasets):
        prediction = torch.from_numpy(table[colour_index(image, levels)])
        metric.results.append(
            metric.intersect_and_union(prediction, torch.from_numpy(label),
                                       num_classes, IGNORE_INDEX))
    return metric.compute_metrics(metric.results)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """Fit on the training set, score on the validation set, print mIoU.

    Args:
        argv (Sequence[str], optional): arguments; ``sys.argv[1:]`` if None.

    Returns:
        dict[str, float]: the validation metrics.
    """
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    train = build_datasets(cfg, 'train_dataloader')
    val = build_datasets(cfg, 'val_dataloader')
    table = fit_colour_lookup(train, len(train[0].metainfo['classes']),
                              args.levels)
    metrics = score_colour_lookup(val, table, args.levels)
    print(f'colour lookup ({args.levels} levels per RGB channel, fit on '
          f'{sum(map(len, train))} training images, scored on '
          f'{sum(map(len, val))} validation images): mIoU '
          f'{metrics["mIoU"]:.2f}, aAcc {metrics["aAcc"]:.2f}')
    return metrics


if __name__ == '__main__':
    main()
