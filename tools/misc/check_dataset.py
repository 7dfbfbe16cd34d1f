"""Read every image and label map of a config's datasets and report problems.

    python tools/misc/check_dataset.py CONFIG [--split train val test]
        [--workers N] [--cfg-options KEY=VALUE ...]

Each split's datasets (those inside wrappers too) are built from
``<split>_dataloader.dataset`` of the config, which gives the file list and
the metainfo (classes, ``reduce_zero_label``, ``label_map``); the files are
decoded as the pipeline's loading transforms decode them, in ``--workers``
processes. The report lists, one line each (the problem's kind first):

- ``unreadable``: missing, empty or undecodable file;
- ``truncated``: a JPEG or PNG whose data ends early (cv2 decodes a cut JPEG
  without an error and fills the rest with grey);
- ``size mismatch``: image and label map of different height or width;
- ``exif orientation``: an image whose EXIF orientation tag would turn or
  mirror it when shown; the loader reads it as stored (the tag ignored) to
  match label maps stored unturned, so check that its label map is too;
- ``colour label map``: a label map with more than one channel;
- ``label values``: class ids outside ``[0, num_classes)`` other than the
  ignore index, after ``reduce_zero_label`` and ``label_map``, or labels
  that are not integers;
- ``empty split``, ``dataset`` (cannot be listed), ``config`` (a loader's or
  the decode head's ``num_classes`` differs from the dataset's classes);

then a per-class pixel table for every split. The exit status is 1 when
anything is wrong.
"""
import argparse
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import mmcv
import numpy as np
from mmengine import fileio
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.registry import init_default_scope
from mmengine.utils import track_parallel_progress, track_progress
from mmseg.registry import DATASETS

from regproxy.datasets import (exif_orientation, is_truncated, leaf_datasets,
                               size_mismatch_hint, to_class_ids,
                               unturned_flag)

SPLITS = ('train', 'val', 'test')
IGNORE_INDEX = 255


@dataclass
class Problem:
    """One thing wrong with a file (or a split).

    Args:
        kind (str): one of the kinds in the module docstring.
        path (str): the file (or the split) it concerns.
        message (str): what was found and what was expected.
    """
    kind: str
    path: str
    message: str

    def __str__(self) -> str:
        return f'{self.kind}: {self.path}: {self.message}'


@dataclass
class SampleCheck:
    """What :func:`check_sample` found in one image and its label map.

    Args:
        has_labels (bool): whether the sample has a label map.
        problems (list[Problem]): empty when the pair is fine.
        class_pixels (np.ndarray, optional): (num_classes, ) int64 pixel
            count per class; None when the label map could not be checked.
        ignored_pixels (int): pixels labelled with the ignore index.
    """
    has_labels: bool
    problems: List[Problem] = field(default_factory=list)
    class_pixels: Optional[np.ndarray] = None
    ignored_pixels: int = 0


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


def _load(path: str, kind: str, flag: str, backend: str,
          backend_args: Optional[dict], problems: List[Problem]
          ) -> Tuple[Optional[np.ndarray], bytes]:
    """The decoded file (None after recording what is wrong with it) and
    its data."""
    data = b''
    try:
        data = fileio.get(path, backend_args=backend_args)
    except Exception as error:  # any file backend
        problems.append(Problem('unreadable', path,
                                f'cannot read the {kind}: '
                                f'{type(error).__name__}: {error}'))
        return None, data
    if not data:
        problems.append(Problem('unreadable', path,
                                f'the {kind} is empty (0 bytes)'))
        return None, data
    if is_truncated(data):
        problems.append(Problem(
            'truncated', path,
            f'the {kind} ends early ({len(data)} bytes, no end marker); '
            'decoders fill the missing part or fail: copy or download it '
            'again'))
        return None, data
    try:
        array = mmcv.imfrombytes(data, flag=flag, backend=backend)
    except Exception as error:  # decoders raise many types
        array, cause = None, f'{type(error).__name__}: {error}'
    else:
        cause = 'the decoder returned nothing'
    if array is None:
        problems.append(Problem(
            'unreadable', path,
            f'not a decodable {kind} ({backend} backend, {len(data)} bytes): '
            f'{cause}'))
    return array, data


def _check_labels(labels: np.ndarray, task: dict,
                  result: SampleCheck) -> None:
    """Channel, type and value checks of a decoded label map; fills in the
    per-class pixel counts."""
    path, num_classes = task['seg_map_path'], task['num_classes']
    if labels.ndim == 3 and labels.shape[2] == 1:
        labels = labels[..., 0]
    if labels.ndim != 2:
        same = labels.ndim == 3 and all(
            np.array_equal(labels[..., 0], labels[..., c])
            for c in range(1, labels.shape[2]))
        hint = ('its channels are identical: save the class ids as one '
                'channel (grey or palette PNG)' if same else
                'convert the colours to class ids with the dataset\'s '
                'palette')
        channels = labels.shape[2] if labels.ndim == 3 else '?'
        result.problems.append(Problem(
            'colour label map', path,
            f'{channels} channels, shape {labels.shape}; expected one '
            f'channel of class ids: {hint}'))
        return
    if not np.issubdtype(labels.dtype, np.integer):
        result.problems.append(Problem(
            'label values', path,
            f'{labels.dtype} values; expected integer class ids'))
        return
    if labels.dtype in (np.uint8, np.uint16):  # faster than np.unique
        counts = np.bincount(labels.ravel())
        raw = np.flatnonzero(counts)
        counts = counts[raw]
    else:
        raw, counts = np.unique(labels, return_counts=True)
    ids = to_class_ids(raw, task['reduce_zero_label'], task['label_map'])
    valid = (ids >= 0) & (ids < num_classes)
    ignored = ids == task['ignore_index']
    result.class_pixels = np.bincount(
        ids[valid], counts[valid], minlength=num_classes).astype(np.int64)
    result.ignored_pixels = int(counts[ignored].sum())
    outside = ~valid & ~ignored
    bad: Dict[int, Tuple[int, int]] = {}  # class id: (a raw value, pixels)
    for value, first, count in zip(ids[outside], raw[outside],
                                   counts[outside]):
        first, pixels = bad.get(int(value), (int(first), 0))
        bad[int(value)] = (first, pixels + int(count))
    if not bad:
        return
    shown = ', '.join(
        f'{value}' + (f' (raw {first})' if first != value else '') +
        f': {pixels} px' for value, (first, pixels) in sorted(bad.items())[:8])
    more = f' and {len(bad) - 8} more' if len(bad) > 8 else ''
    steps = [name for name in ('reduce_zero_label', 'label_map') if task[name]]
    after = f' after {" and ".join(steps)}' if steps else ''
    result.problems.append(Problem(
        'label values', path,
        f'values {shown}{more}{after}; expected class ids in '
        f'[0, {num_classes}) or {task["ignore_index"]} (ignored): check '
        'num_classes and reduce_zero_label, and that the labels hold class '
        'ids, not colours'))


def check_sample(task: dict) -> SampleCheck:
    """Read one image and its label map and check them.

    Args:
        task (dict): ``img_path``, ``seg_map_path`` (None: the image only),
            ``num_classes``, ``ignore_index``, ``reduce_zero_label``,
            ``label_map``, ``backend_args``, and the loaders' decoders
            (``img_backend``, ``img_flag``, ``label_backend``).

    Returns:
        SampleCheck: the problems found and the per-class pixel counts.
    """
    result = SampleCheck(task['seg_map_path'] is not None)
    image, image_data = _load(
        task['img_path'], 'image',
        unturned_flag(task['img_flag'], task['img_backend']),
        task['img_backend'], task['backend_args'], result.problems)
    orientation = exif_orientation(image_data) if image is not None else 1
    if 2 <= orientation <= 8:  # the tag's values that change the picture
        result.problems.append(Problem(
            'exif orientation', task['img_path'],
            f'EXIF orientation {orientation} turns or mirrors the image '
            'when shown; the loader reads it as stored (the tag ignored), '
            'as label maps are stored unturned: check that its label map '
            'fits the stored image, then save the image without the tag'))
    if not result.has_labels:
        return result
    path = task['seg_map_path']
    labels, _ = _load(path, 'label map', 'unchanged', task['label_backend'],
                      task['backend_args'], result.problems)
    if labels is None:
        return result
    if image is not None and image.shape[:2] != labels.shape[:2]:
        result.problems.append(Problem(
            'size mismatch', path,
            f'label map is {labels.shape[0]}x{labels.shape[1]} (HxW), its '
            f'image {task["img_path"]} {image.shape[0]}x{image.shape[1]}; '
            'expected the same size.' + size_mismatch_hint(
                image_data, image.shape[:2], labels.shape[:2])))
    _check_labels(labels, task, result)
    return result


def decoder_settings(pipeline) -> dict:
    """The decoders and label settings of a pipeline's loaders (those nested
    in ``TestTimeAug`` too), with mmcv's and mmseg's defaults.

    Args:
        pipeline (list): the dataset's pipeline config.

    Returns:
        dict: ``img_backend``, ``img_flag``, ``label_backend``,
        ``ignore_index`` and the loaders' ``num_classes`` (None when no
        loader names one).
    """
    settings = dict(img_backend='cv2', img_flag='color',
                    label_backend='pillow', ignore_index=IGNORE_INDEX,
                    num_classes=None)
    pending = list(pipeline or ())
    while pending:
        transform = pending.pop(0)
        if isinstance(transform, (list, tuple)):
            pending.extend(transform)
            continue
        if not isinstance(transform, dict):
            continue
        pending.extend(transform.get('transforms', ()))
        name = str(transform.get('type', ''))
        if name.endswith('LoadImageFromFile'):
            args = dict(img_backend='imdecode_backend', img_flag='color_type')
        elif name.endswith('LoadAnnotations'):
            args = dict(label_backend='imdecode_backend',
                        num_classes='num_classes', ignore_index='ignore_index')
        else:
            continue
        settings.update((key, transform[arg]) for key, arg in args.items()
                        if arg in transform)
    return settings


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
        self.files += 1 + check.has_labels
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
    """Build one split's datasets from their configs and check all files.

    Args:
        name (str): the split, for the report.
        dataset_cfg (dict): ``<split>_dataloader.dataset`` of the config.
        workers (int): worker processes.
        model_num_classes (int, optional): the decode head's
            ``num_classes``, compared with the dataset's classes.

    Returns:
        SplitReport: problems, counts and timing.
    """
    leaves = []
    for leaf_cfg in leaf_datasets(dataset_cfg):
        try:
            # No pipeline (the files are read here); unserialised, an empty
            # file list builds and is reported.
            leaves.append(DATASETS.build(
                dict(leaf_cfg, pipeline=[], serialize_data=False)))
        except Exception as error:  # any dataset, any file backend
            report = SplitReport(name, (), IGNORE_INDEX)
            report.problems.append(Problem(
                'dataset', name, f'cannot list the files of '
                f'{leaf_cfg.get("type")} (data_root '
                f'{leaf_cfg.get("data_root")!r}): {type(error).__name__}: '
                f'{error}'))
            return report

    classes = leaves[0].metainfo['classes']
    settings = decoder_settings(dataset_cfg.get('pipeline'))
    report = SplitReport(name, classes, settings['ignore_index'])
    for source, count in (('the label loader\'s num_classes',
                           settings['num_classes']),
                          ('the decode head\'s num_classes',
                           model_num_classes)):
        if count is not None and count != len(classes):
            report.problems.append(Problem(
                'config', name, f'{source} is {count}, the dataset has '
                f'{len(classes)} classes; expected the same number'))
    settings['num_classes'] = len(classes)

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
            dict(settings,
                 img_path=info['img_path'],
                 seg_map_path=info.get('seg_map_path'),
                 reduce_zero_label=info.get('reduce_zero_label', False),
                 label_map=info.get('label_map'),
                 backend_args=leaf.backend_args) for info in infos
        ]
        if workers == 1 or len(tasks) == 1:
            checks = track_progress(check_sample, tasks)
        else:
            processes = min(workers, len(tasks))
            checks = track_parallel_progress(
                check_sample, tasks, processes,
                chunksize=max(1, min(32, len(tasks) // (processes * 8))))
        for check in checks:
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
    head = cfg.get('model', {}).get('decode_head')
    model_num_classes = (head.get('num_classes')
                         if isinstance(head, dict) else None)

    reports = {}
    for split, dataset_cfg in _dataset_cfgs(cfg, args.split):
        if isinstance(dataset_cfg, ConfigDict):
            dataset_cfg = dataset_cfg.to_dict()
        reports[split] = check_split(split, dataset_cfg, args.workers,
                                     model_num_classes)

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
