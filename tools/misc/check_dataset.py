"""Read every image and label map of a config's splits and report problems.

    python tools/misc/check_dataset.py CONFIG [--split train val test]
        [--colour-lookup] [--cfg-options KEY=VALUE ...]

The files are read by the checked loaders of ``regproxy.datasets``, so a
problem is reported in the words a training run would stop with. What it
checks and prints: docs/datasets.md, "Checking a dataset before training".
``--colour-lookup`` also tells whether colour alone gives the classes away
(:class:`ColourLookup`, fit on train and scored on val as they are read).
"""
import argparse
import sys
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import torch
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from mmengine.utils import track_iter_progress
from mmseg.datasets import BaseSegDataset
from mmseg.evaluation import IoUMetric
from mmseg.registry import DATASETS, TRANSFORMS

from regproxy.datasets import check_data_roots, leaf_datasets
from regproxy.utils import load_config

SPLITS = ('train', 'val', 'test')
IGNORE_INDEX = 255
LEVELS = 16  # of the colour lookup, per RGB channel: 4,096 colours
# What is done with each loaded sample: (its dataset, the loaders' results).
Visit = Callable[[BaseSegDataset, dict], None]


class SplitReport(NamedTuple):
    """The number of samples of one split and its problems."""
    samples: int
    problems: List[str]


def colour_index(image: np.ndarray, levels: int) -> np.ndarray:
    """(H, W) int64 index in ``[0, levels**3)`` of the quantised colour of
    each pixel of an (H, W, 3) uint8 image (any channel order)."""
    q = image.astype(np.int64) * levels // 256
    return (q[..., 0] * levels + q[..., 1]) * levels + q[..., 2]


class ColourLookup:
    """A per-pixel colour lookup: each pixel gets the most frequent class
    of its quantised colour among the :meth:`fit` samples (an unseen colour:
    the most frequent class), scored on the :meth:`score` samples by mmseg's
    ``IoUMetric``. A high mIoU means colour alone tells the classes apart.

    Args:
        levels (int): quantisation levels per channel. Default: LEVELS.
    """

    def __init__(self, levels: int = LEVELS):
        self.levels = levels
        # label maps are uint8: 256 columns hold every class id
        self.counts = np.zeros((levels**3, 256), np.int64)
        self.fitted = 0
        self.table = None
        self.metric = IoUMetric(iou_metrics=['mIoU'],
                                ignore_index=IGNORE_INDEX)

    def fit(self, dataset: BaseSegDataset, results: dict) -> None:
        labels = results['gt_seg_map']
        keep = labels != IGNORE_INDEX
        pairs = (colour_index(results['img'], self.levels)[keep] * 256 +
                 labels[keep])
        self.counts += np.bincount(
            pairs, minlength=self.counts.size).reshape(self.counts.shape)
        self.fitted += 1

    def score(self, dataset: BaseSegDataset, results: dict) -> None:
        if self.table is None:  # the first scored sample ends the fit
            self.table = self.counts.argmax(axis=1)
            unseen = self.counts.sum(axis=1) == 0
            self.table[unseen] = self.counts.sum(axis=0).argmax()
            self.metric.dataset_meta = dataset.metainfo
        prediction = self.table[colour_index(results['img'], self.levels)]
        self.metric.results.append(
            self.metric.intersect_and_union(
                torch.from_numpy(prediction),
                torch.from_numpy(results['gt_seg_map']),
                len(dataset.metainfo['classes']), IGNORE_INDEX))

    def metrics(self) -> Dict[str, float]:
        """``aAcc``, ``mIoU`` and ``mAcc`` (percent); mmseg logs the class
        table."""
        return self.metric.compute_metrics(self.metric.results)


def check_split(split: str, cfg: Config,
                visit: Optional[Visit] = None) -> SplitReport:
    """Build the datasets of ``cfg.<split>_dataloader`` (those inside
    wrappers, once each), load all their samples, ``visit`` each one that
    loads, and report."""
    loader = f'{split}_dataloader'
    if not cfg.get(loader):
        return SplitReport(0, [f'{split}: the config has no {loader}'])
    try:
        check_data_roots(cfg, [loader])
        # No pipeline: the samples are loaded below, once each.
        datasets = [
            DATASETS.build(dict(leaf, pipeline=[], serialize_data=False))
            for leaf in leaf_datasets(cfg[loader]['dataset'])
        ]
        classes = datasets[0].metainfo['classes']
        load_image = TRANSFORMS.build(dict(type='CheckedLoadImageFromFile'))
        load_labels = TRANSFORMS.build(
            dict(type='CheckedLoadAnnotations', num_classes=len(classes)))
    except Exception as error:  # any dataset class, any file backend
        return SplitReport(0, [f'{split}: cannot list its samples: '
                               f'{type(error).__name__}: {error}'])
    report = SplitReport(sum(map(len, datasets)), [])
    for dataset in datasets:
        print(f'{split}: {type(dataset).__name__} at {dataset.data_root}, '
              f'{len(dataset)} samples, reduce_zero_label='
              f'{dataset.reduce_zero_label}')
        for index in track_iter_progress(range(len(dataset))):
            try:
                results = load_labels(
                    load_image(dataset.get_data_info(index)))
            except Exception as error:  # the loaders' errors name the file
                report.problems.append(f'{split}: {error}')
                continue
            if visit is not None:
                visit(dataset, results)
    return report


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, SplitReport]:
    """Check the splits (in the order of :data:`SPLITS`); exit with status
    1 when anything is wrong, else return the report of each split."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config file')
    parser.add_argument('--split', nargs='+', choices=SPLITS,
                        default=['train', 'val'],
                        help='splits to check (<split>_dataloader); default: '
                        'train val (mmseg\'s configs test on val)')
    parser.add_argument(
        '--colour-lookup', action='store_true',
        help=f'also score a per-pixel colour lookup ({LEVELS} levels per '
        'channel) fit on train, on val')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. '
                        'train_dataloader.dataset.data_root=/data/ade')
    args = parser.parse_args(argv)
    if args.colour_lookup and not {'train', 'val'} <= set(args.split):
        parser.error('--colour-lookup fits on train and scores on val: '
                     '--split needs both')
    cfg = load_config(args.config, args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmseg'))

    lookup = ColourLookup() if args.colour_lookup else None
    visits = dict(train=lookup.fit, val=lookup.score) if lookup else {}
    reports = {split: check_split(split, cfg, visits.get(split))
               for split in SPLITS if split in args.split}
    for split, report in reports.items():
        print(f'\n{split}: {report.samples} samples, '
              f'{len(report.problems)} problem(s)')
    if lookup and lookup.metric.results:
        metrics = lookup.metrics()
        print(f'\ncolour lookup ({LEVELS} levels per RGB channel, fit on '
              f'{lookup.fitted} training images, scored on '
              f'{len(lookup.metric.results)} validation images): mIoU '
              f'{metrics["mIoU"]:.2f}, aAcc {metrics["aAcc"]:.2f}')
    problems = [p for report in reports.values() for p in report.problems]
    if problems:
        print(f'\n{len(problems)} problem(s):', *problems, sep='\n  ')
        sys.exit(f'error: {len(problems)} problem(s) (listed above)')
    print(f'\nok: {sum(r.samples for r in reports.values())} samples in '
          f'{len(reports)} split(s), no problems')
    return reports


if __name__ == '__main__':
    main()
