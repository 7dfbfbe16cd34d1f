"""How far a per-pixel colour lookup gets on a config's dataset.

    python tools/analysis/colour_baseline.py CONFIG [--cfg-options KEY=VALUE]

Each validation pixel gets the most frequent training class of its colour
(:data:`LEVELS` levels per channel; an unseen colour: the most frequent
class), scored by mmseg's IoUMetric: a high mIoU means colour alone tells
the classes apart.
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
from regproxy.utils import load_config

IGNORE_INDEX = 255
LEVELS = 16  # per RGB channel: 4,096 colours


def colour_index(image: np.ndarray, levels: int) -> np.ndarray:
    """(H, W) int64 index in ``[0, levels**3)`` of the quantised colour of
    each pixel of an (H, W, 3) uint8 image (any channel order)."""
    q = image.astype(np.int64) * levels // 256
    return (q[..., 0] * levels + q[..., 1]) * levels + q[..., 2]


def build_datasets(cfg: Config, loader: str) -> list:
    """The datasets of ``cfg[loader]`` (inside wrappers too), which read
    each image and label map at its stored size."""
    if not cfg.get(loader):
        sys.exit(f'error: the config has no {loader}')
    pipeline = [
        dict(type='CheckedLoadImageFromFile'),
        dict(type='CheckedLoadAnnotations')
    ]
    return [
        DATASETS.build(dict(dataset, pipeline=pipeline))
        for dataset in leaf_datasets(cfg[loader]['dataset'])
    ]


def samples(datasets: list) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """(image, label map) of every sample of ``datasets``, in order."""
    for dataset in datasets:
        for index in range(len(dataset)):
            sample = dataset[index]
            yield sample['img'], sample['gt_seg_map']


def fit_colour_lookup(datasets: list, num_classes: int,
                      levels: int) -> np.ndarray:
    """(levels**3, ) int64: the most frequent class of each quantised
    colour in ``datasets``, or of all pixels for an unseen colour."""
    counts = np.zeros(levels**3 * num_classes, np.int64)
    for image, label in samples(datasets):
        keep = label != IGNORE_INDEX
        pairs = colour_index(image, levels)[keep] * num_classes + label[keep]
        counts += np.bincount(pairs, minlength=counts.size)
    counts = counts.reshape(levels**3, num_classes)
    table = counts.argmax(axis=1)
    table[counts.sum(axis=1) == 0] = counts.sum(axis=0).argmax()
    return table


def score_colour_lookup(datasets: list, table: np.ndarray,
                        levels: int) -> Dict[str, float]:
    """``aAcc``, ``mIoU`` and ``mAcc`` (percent) of the lookup ``table`` on
    ``datasets``, by mmseg's ``IoUMetric`` (which logs the class table)."""
    metric = IoUMetric(iou_metrics=['mIoU'], ignore_index=IGNORE_INDEX)
    metric.dataset_meta = datasets[0].metainfo
    num_classes = len(metric.dataset_meta['classes'])
    for image, label in samples(datasets):
        prediction = torch.from_numpy(table[colour_index(image, levels)])
        metric.results.append(
            metric.intersect_and_union(prediction, torch.from_numpy(label),
                                       num_classes, IGNORE_INDEX))
    return metric.compute_metrics(metric.results)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """Fit on the training set, score on the validation set, print and
    return the metrics."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. '
                        'train_dataloader.dataset.data_root=PATH')
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    train = build_datasets(cfg, 'train_dataloader')
    val = build_datasets(cfg, 'val_dataloader')
    table = fit_colour_lookup(train, len(train[0].metainfo['classes']),
                              LEVELS)
    metrics = score_colour_lookup(val, table, LEVELS)
    print(f'colour lookup ({LEVELS} levels per RGB channel, fit on '
          f'{sum(map(len, train))} training images, scored on '
          f'{sum(map(len, val))} validation images): mIoU '
          f'{metrics["mIoU"]:.2f}, aAcc {metrics["aAcc"]:.2f}')
    return metrics


if __name__ == '__main__':
    main()
