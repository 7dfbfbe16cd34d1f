"""Read every image and label map of a config's splits and report problems.

    python tools/misc/check_dataset.py CONFIG [--split train val test]
        [--cfg-options KEY=VALUE ...]

The files are read by the checked loaders of ``regproxy.datasets``, so a
problem is reported in the words a training run would stop with. What it
checks and prints: docs/datasets.md, "Checking a dataset before training".
"""
import argparse
import os
import sys
from typing import Dict, List, NamedTuple, Optional, Sequence

from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from mmengine.utils import track_iter_progress
from mmseg.registry import DATASETS, TRANSFORMS

from regproxy.datasets import check_data_roots, leaf_datasets
from regproxy.utils import load_config

SPLITS = ('train', 'val', 'test')


class SplitReport(NamedTuple):
    """The number of samples of one split and its problems."""
    samples: int
    problems: List[str]


def check_split(split: str, cfg: Config) -> SplitReport:
    """Build the datasets of ``cfg.<split>_dataloader`` (those inside
    wrappers, once each), load all their samples and report."""
    loader = f'{split}_dataloader'
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
                load_labels(load_image(dataset.get_data_info(index)))
            except Exception as error:  # the loaders' errors name the file
                report.problems.append(f'{split}: {error}')
    return report


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, SplitReport]:
    """Check the splits; exit with status 1 when anything is wrong, else
    return the report of each split checked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config file')
    parser.add_argument('--split', nargs='+', choices=SPLITS,
                        default=['train', 'val'],
                        help='splits to check (<split>_dataloader); default: '
                        'train val (mmseg\'s configs test on val)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. '
                        'train_dataloader.dataset.data_root=/data/ade')
    args = parser.parse_args(argv)
    if not os.path.isfile(args.config):
        sys.exit(f'error: config {args.config} does not exist')
    cfg = load_config(args.config, args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmseg'))

    reports = {split: check_split(split, cfg) for split in args.split}
    for split, report in reports.items():
        print(f'\n{split}: {report.samples} samples, '
              f'{len(report.problems)} problem(s)')
    problems = [p for report in reports.values() for p in report.problems]
    if problems:
        print(f'\n{len(problems)} problem(s):', *problems, sep='\n  ')
        sys.exit(f'error: {len(problems)} problem(s) (listed above)')
    print(f'\nok: {sum(r.samples for r in reports.values())} samples in '
          f'{len(reports)} split(s), no problems')
    return reports


if __name__ == '__main__':
    main()
