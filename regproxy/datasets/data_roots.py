"""Refuse, before anything is built, to start on dataset folders that do
not exist (see docs/datasets.md)."""
import os
import os.path as osp
from typing import Iterator, Optional, Sequence

from mmengine.config import Config
from mmseg.registry import DATASETS

__all__ = ['check_data_roots', 'generates_data_at', 'leaf_datasets']


def leaf_datasets(dataset: dict) -> Iterator[dict]:
    """The config dicts (in place) of the datasets inside a dataset config
    ``dataset`` of (possibly nested) ``ConcatDataset`` (``datasets``),
    ``RepeatDataset`` or ``ClassBalancedDataset`` (``dataset``) wrappers, or
    ``dataset`` itself."""
    if 'datasets' in dataset:
        for child in dataset['datasets']:
            yield from leaf_datasets(child)
    elif 'dataset' in dataset:
        yield from leaf_datasets(dataset['dataset'])
    else:
        yield dataset


def check_data_roots(cfg: Config, loaders: Sequence[str]) -> None:
    """Raise a ``FileNotFoundError`` naming the path and pointing to the
    preparation steps when the data of a dataset of the ``loaders`` (e.g.
    ``('train_dataloader', )``) of ``cfg`` is missing: ``data_root``, the
    image and label folders, ``ann_file``, or files of its suffixes. Remote
    paths (``s3://...``) and a root the dataset generates
    (:func:`generates_data_at`) are skipped.
    """
    for loader in loaders:
        if not cfg.get(loader):
            continue
        for dataset in leaf_datasets(cfg[loader]['dataset']):
            cls = dataset['type']
            if isinstance(cls, str):
                cls = DATASETS.get(cls)  # None when not registered
            problem = _missing_data(dataset, cls)
            if problem is None:
                continue
            name = cls.__name__ if cls else str(dataset['type'])
            generated = getattr(cls, 'generated_root', None)
            made = (f' ({name} generates its files on first use only at '
                    f"'{generated}', relative to the working directory)"
                    if generated else '')
            raise FileNotFoundError(
                f'{loader} ({name}): {problem}. Prepare the dataset as '
                f'docs/datasets.md describes{made}. A dataset kept elsewhere '
                'can be linked there or given per dataloader with '
                f'--cfg-options {loader}.dataset.data_root=PATH.')


def generates_data_at(dataset_cls: Optional[type],
                      data_root: Optional[str]) -> bool:
    """Whether ``dataset_cls`` creates its files at ``data_root`` on first
    use: its ``generated_root`` names the one folder (relative to the
    working directory) where it does, so a mistyped root stays an error."""
    generated = getattr(dataset_cls, 'generated_root', None)
    return bool(generated and data_root) and (
        osp.abspath(data_root) == osp.abspath(generated))


def _missing_data(dataset: dict, cls: Optional[type]) -> Optional[str]:
    """What is missing for config ``dataset`` of class ``cls``, or None."""
    root = dataset.get('data_root') or ''
    if generates_data_at(cls, root) and not osp.exists(root):
        return None  # written on first use
    prefix = dataset.get('data_prefix') or {}
    img_dir = osp.join(root, prefix.get('img_path') or '')
    seg_dir = prefix.get('seg_map_path') and osp.join(root,
                                                      prefix['seg_map_path'])
    ann_file = dataset.get('ann_file') and osp.join(root, dataset['ann_file'])
    for path in (root, img_dir, seg_dir, ann_file):
        if path and '://' not in path and not osp.exists(path):
            where = '' if osp.isabs(path) else f' (in {os.getcwd()})'
            unlabelled = ('; a test set without label maps can be predicted, '
                          'not scored: `test.py CONFIG CHECKPOINT '
                          '--format-only --out DIR` reads no labels'
                          if path == seg_dir else '')
            return f"'{path}' does not exist{where}{unlabelled}"
    if cls is None or '://' in img_dir:
        return None
    # mmseg's own file listing, without pipeline or serialisation
    built = DATASETS.build(dict(dataset, pipeline=[], lazy_init=True))
    listed = built.load_data_list()
    if not listed:
        return (f"'{ann_file or img_dir}' holds no "
                f"'*{getattr(built, 'img_suffix', '')}' image (other "
                "suffixes: set the dataset's img_suffix)")
    seg_map = listed[0].get('seg_map_path')
    if seg_dir and seg_map and not osp.exists(seg_map):
        return (f"'{seg_map}', the label map of '{listed[0]['img_path']}', "
                "does not exist (other suffixes: set the dataset's "
                'seg_map_suffix)')
    return None
