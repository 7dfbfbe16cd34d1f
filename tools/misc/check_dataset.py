"""Read every image and label map of a config's datasets and report problems.

    python tools/misc/check_dataset.py CONFIG [--split train val test]
        [--workers N] [--cfg-options KEY=VALUE ...]

Each split's dataset is built from ``<split>_dataloader.dataset`` of the
config, which gives the file list and the metainfo (classes,
``reduce_zero_label``, ``label_map``); the files are decoded as the
pipeline's loading transforms decode them (see
:func:`regproxy.datasets.checks.check_sample`), in ``--workers`` processes.
The report lists, one line each, unreadable or truncated files, image/label
size mismatches, colour label maps, class ids outside ``[0, num_classes)``
other than the ignore index, and empty splits, then a per-class pixel table
for every split. The exit status is 1 when anything is wrong.
"""
import argparse
import copy
import os
import sys
import time
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

from mmengine.config import Config, ConfigDict, DictAction
from mmengine.registry import init_default_scope
from mmengine.utils import track_parallel_progress, track_progress
from mmseg.registry import DATASETS

from regproxy.datasets.checks import (Problem, SampleCheck,
                                      check_sample_kwargs)

SPLITS = ('train', 'val', 'test')
IGNORE_INDEX = 255
# mmcv's LoadImageFromFile and mmseg's LoadAnnotations decode with these
# unless the pipeline says otherwise.
IMAGE_DEFAULTS = dict(imdecode_backend='cv2', color_type='color')
LABEL_DEFAULTS = dict(imdecode_backend='pillow')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Read every image and label map of a config\'s '
        'datasets and report unreadable files, size mismatches, bad label '
        'values and empty splits.')
    parser.add_argument('config', help='config file')
    parser.add_argument(
        '--split',
        nargs='+',
        choices=SPLITS,
        default=list(SPLITS),
        help='splits to check (<split>_dataloader of the config); '
        'default: all')
    parser.add_argument(
        '--workers',
        type=int,
        default=min(8, os.cpu_count() or 1),
        help='worker processes reading files (1: read in this process); '
        'default: the number of CPUs, at most 8')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, e.g. '
        'train_dataloader.dataset.data_root=/data/ade')
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f'--workers must be at least 1, got {args.workers}')
    return args


def _lazy(dataset_cfg: dict) -> dict:
    """A copy of a dataset config (wrappers included) whose datasets list
    their files only when asked: an empty split then builds."""
    dataset_cfg = copy.deepcopy(dataset_cfg)
    pending = [dataset_cfg]
    while pending:
        cfg = pending.pop()
        cfg['lazy_init'] = True
        if isinstance(cfg.get('dataset'), dict):
            pending.append(cfg['dataset'])
        pending.extend(c for c in cfg.get('datasets', ()) if isinstance(c,
                                                                       dict))
    return dataset_cfg


def _leaves(dataset) -> list:
    """The datasets that hold files, inside Concat/Repeat/... wrappers."""
    if hasattr(dataset, 'datasets'):
        return [leaf for d in dataset.datasets for leaf in _leaves(d)]
    if hasattr(dataset, 'dataset'):
        return _leaves(dataset.dataset)
    return [dataset]


def _transforms(pipeline) -> List[dict]:
    """Every transform config in a pipeline, nested ones (TestTimeAug)
    included."""
    found = []
    pending = list(pipeline or ())
    while pending:
        item = pending.pop(0)
        if isinstance(item, (list, tuple)):
            pending.extend(item)
        elif isinstance(item, dict):
            found.append(item)
            pending.extend(item.get('transforms', ()))
    return found


def decoder_settings(pipeline) -> dict:
    """``check_sample`` keyword arguments from the pipeline's loaders.

    Args:
        pipeline (list): the dataset's pipeline config.

    Returns:
        dict: ``img_backend``, ``img_flag``, ``label_backend``,
        ``ignore_index`` and the loaders' ``num_classes`` (None when no
        loader names one).
    """
    image, label = dict(IMAGE_DEFAULTS), dict(LABEL_DEFAULTS)
    num_classes, ignore_index = None, IGNORE_INDEX
    for transform in _transforms(pipeline):
        name = str(transform.get('type', ''))
        if name.endswith('LoadImageFromFile'):
            image.update((k, transform[k]) for k in image if k in transform)
        elif name.endswith('LoadAnnotations'):
            label.update((k, transform[k]) for k in label if k in transform)
            num_classes = transform.get('num_classes', num_classes)
            ignore_index = transform.get('ignore_index', ignore_index)
    return dict(
        img_backend=image['imdecode_backend'],
        img_flag=image['color_type'],
        label_backend=label['imdecode_backend'],
        ignore_index=ignore_index,
        loader_num_classes=num_classes)


def _track(func, tasks: list, workers: int) -> List[SampleCheck]:
    """``func`` of every task, in order, with mmengine's progress bar; in
    ``workers`` processes when there is more than one."""
    if not tasks:
        return []
    if workers == 1 or len(tasks) == 1:
        return track_progress(func, tasks)
    workers = min(workers, len(tasks))
    chunksize = max(1, min(32, len(tasks) // (workers * 8)))
    return track_parallel_progress(
        func, tasks, workers, chunksize=chunksize)


class SplitReport:
    """What was found in one split, and its per-class pixel table."""

    def __init__(self, name: str, classes: Sequence[str], ignore_index: int):
        self.name = name
        self.classes = tuple(classes)
        self.ignore_index = ignore_index
        self.problems: List[Problem] = []
        self.samples = 0
        self.files = 0
        self.seconds = 0.
        self.pixels = [0] * len(self.classes)
        self.images = [0] * len(self.classes)
        self.ignored = 0

    def add(self, check: SampleCheck) -> None:
        self.samples += 1
        self.files += 1 + (check.seg_map_path is not None)
        self.problems += check.problems
        if check.class_pixels is not None:
            for index, count in enumerate(check.class_pixels.tolist()):
                self.pixels[index] += count
                self.images[index] += count > 0
            self.ignored += check.ignored_pixels

    def table(self) -> str:
        total = sum(self.pixels) + self.ignored
        width = max([len(c) for c in self.classes] + [14])
        lines = [f'  {"id":>3}  {"class":<{width}}  {"pixels":>13}  '
                 f'{"share":>7}  {"images":>7}']
        rows = [(str(i), c, p, n) for i, (c, p, n) in enumerate(
            zip(self.classes, self.pixels, self.images))]
        rows.append(('', f'ignored ({self.ignore_index})', self.ignored, ''))
        for index, name, pixels, images in rows:
            share = f'{100 * pixels / total:.2f}%' if total else '-'
            lines.append(f'  {index:>3}  {name:<{width}}  {pixels:>13,}  '
                         f'{share:>7}  {images:>7}')
        return '\n'.join(lines)


def _describe(dataset) -> str:
    prefix = dataset.data_prefix
    folders = ', '.join(
        str(prefix[k]) for k in ('img_path', 'seg_map_path') if prefix.get(k))
    return f'{type(dataset).__name__} ({folders})'


def check_split(name: str, dataset_cfg: dict, workers: int,
                model_num_classes: Optional[int]) -> SplitReport:
    """Build one split's dataset from its config and check all its files.

    Args:
        name (str): the split, for the report.
        dataset_cfg (dict): ``<split>_dataloader.dataset`` of the config.
        workers (int): worker processes.
        model_num_classes (int, optional): the decode head's
            ``num_classes``, compared with the dataset's classes.

    Returns:
        SplitReport: problems, counts and timing.
    """
    try:
        dataset = DATASETS.build(_lazy(dataset_cfg))
        leaves = _leaves(dataset)
        for leaf in leaves:
            # Unserialised, an empty file list is no error; it is reported.
            leaf.serialize_data = False
            leaf.full_init()
    except Exception as error:  # any dataset, any file backend
        report = SplitReport(name, (), IGNORE_INDEX)
        report.problems.append(Problem(
            'dataset', name, f'cannot list the files of '
            f'{dataset_cfg.get("type")} (data_root '
            f'{dataset_cfg.get("data_root")!r}): {type(error).__name__}: '
            f'{error}'))
        return report

    classes = leaves[0].metainfo['classes']
    settings = decoder_settings(dataset_cfg.get('pipeline'))
    loader_classes = settings.pop('loader_num_classes')
    report = SplitReport(name, classes, settings['ignore_index'])
    for source, count in (('the label loader\'s num_classes', loader_classes),
                          ('the decode head\'s num_classes',
                           model_num_classes)):
        if count is not None and count != len(classes):
            report.problems.append(Problem(
                'config', name, f'{source} is {count}, the dataset has '
                f'{len(classes)} classes; expected the same number'))

    start = time.perf_counter()
    for leaf in leaves:
        infos = [leaf.get_data_info(i) for i in range(len(leaf))]
        print(f'{name}: {_describe(leaf)}, {len(infos)} samples, '
              f'{len(classes)} classes, reduce_zero_label='
              f'{leaf.reduce_zero_label}', flush=True)
        if not infos:
            report.problems.append(Problem(
                'empty split', name,
                f'{_describe(leaf)} lists no {leaf.img_suffix} images under '
                f'{leaf.data_prefix.get("img_path")!r}; expected at least '
                'one sample'))
            continue
        tasks = [
            dict(img_path=info['img_path'],
                 seg_map_path=info.get('seg_map_path'),
                 reduce_zero_label=info.get('reduce_zero_label', False),
                 label_map=info.get('label_map'),
                 num_classes=len(classes),
                 backend_args=leaf.backend_args,
                 **settings) for info in infos
        ]
        for check in _track(check_sample_kwargs, tasks, workers):
            report.add(check)
    report.seconds = time.perf_counter() - start
    return report


def _dataset_cfgs(cfg: Config,
                  splits: Sequence[str]) -> List[Tuple[str, dict]]:
    """(split, dataset config) pairs; a split with the same dataset as an
    earlier one is checked once."""
    found: List[Tuple[str, dict]] = []
    for split in splits:
        loader = cfg.get(f'{split}_dataloader')
        if not loader or not loader.get('dataset'):
            print(f'{split}: no {split}_dataloader.dataset in the config; '
                  'skipped')
            continue
        dataset_cfg = loader['dataset']
        same = [name for name, seen in found if seen == dataset_cfg]
        if same:
            print(f'{split}: the same dataset as {same[0]}; checked once')
            continue
        found.append((split, dataset_cfg))
    return found


def _model_num_classes(cfg: Config) -> Optional[int]:
    head = cfg.get('model', {}).get('decode_head')
    return head.get('num_classes') if isinstance(head, dict) else None


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, SplitReport]:
    """Run the checks; exit with status 1 when anything is wrong.

    Returns:
        dict: the report of each checked split (when all is well).
    """
    args = parse_args(argv)
    if not os.path.isfile(args.config):
        sys.exit(f'error: config {args.config} does not exist')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmseg'))

    reports = {}
    for split, dataset_cfg in _dataset_cfgs(cfg, args.split):
        if isinstance(dataset_cfg, ConfigDict):
            dataset_cfg = dataset_cfg.to_dict()
        reports[split] = check_split(split, dataset_cfg, args.workers,
                                     _model_num_classes(cfg))

    problems = []
    for split, report in reports.items():
        rate = report.files / report.seconds if report.seconds else 0.
        print(f'\n{split}: {report.samples} samples, {report.files} files '
              f'in {report.seconds:.1f} s ({rate:.0f} files/s), '
              f'{len(report.problems)} problem(s)')
        if sum(report.pixels) + report.ignored:
            print(report.table())
        problems += report.problems
    if not reports:
        sys.exit(f'error: none of the splits {" ".join(args.split)} has a '
                 'dataset in the config')
    if problems:
        print(f'\n{len(problems)} problem(s):')
        for problem in problems:
            print(f'  {problem}')
        kinds = Counter(p.kind for p in problems)
        sys.exit('error: ' + ', '.join(f'{n} {kind}'
                                       for kind, n in kinds.items()) +
                 ' (listed above)')
    print(f'\nok: {sum(r.samples for r in reports.values())} samples in '
          f'{len(reports)} split(s), no problems')
    return reports


if __name__ == '__main__':
    main()
