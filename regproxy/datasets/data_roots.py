"""Refuse, before anything is built, to start on dataset folders that do
not exist, naming the path and how to prepare the data.

A dataset class that writes its own files when they are missing (the shapes
dataset) says where with a ``generated_root`` class attribute: it generates
them there only, so that a mistyped ``data_root`` is the usual missing-data
error rather than a fresh synthetic dataset in the wrong place.
"""
import inspect
import os
import os.path as osp
from typing import Iterator, Optional, Sequence

from mmengine import fileio
from mmengine.config import Config
from mmseg.registry import DATASETS

__all__ = ['check_data_roots', 'generates_data_at', 'leaf_datasets']

# How to obtain each dataset, shown when its folders are missing.
_PREPARE_HINTS = {
    'ADE20KDataset':
    'download ADEChallengeData2016.zip and unzip it into data/ade/, which '
    'gives data/ade/ADEChallengeData2016/{images,annotations}/'
    '{training,validation}',
    'CityscapesDataset':
    'unzip leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip into '
    'data/cityscapes/, then write the *_labelTrainIds.png label maps with '
    "mmsegmentation's `python tools/dataset_converters/cityscapes.py "
    'data/cityscapes --nproc 8`',
    'ShapesDataset':
    "to create it elsewhere, run `python -c \"from regproxy.datasets import "
    "generate_shapes_dataset; generate_shapes_dataset('PATH')\"`",
}
# Why a label-map folder may be missing on purpose.
_UNLABELLED_HINT = (
    '; a test set without label maps can be predicted, not scored: '
    '`test.py CONFIG CHECKPOINT --format-only --out DIR` reads no labels')


def leaf_datasets(dataset: dict) -> Iterator[dict]:
    """The datasets inside (possibly nested) dataset wrappers, or
    ``dataset`` itself.

    The one walker of ``ConcatDataset`` (``datasets``) and
    ``RepeatDataset`` / ``ClassBalancedDataset`` (``dataset``) configs.

    Args:
        dataset (dict): a dataset config (``<split>_dataloader.dataset``).

    Yields:
        dict: the config dict of each dataset that lists files, in place
        (edits reach the config).
    """
    if 'datasets' in dataset:
        for child in dataset['datasets']:
            yield from leaf_datasets(child)
    elif 'dataset' in dataset:
        yield from leaf_datasets(dataset['dataset'])
    else:
        yield dataset


def check_data_roots(cfg: Config, loaders: Sequence[str]) -> None:
    """Fail early, with the preparation step, when a dataset is missing.

    Checks ``data_root`` and the image and annotation folders of every
    dataset (wrappers such as ``ConcatDataset`` included) of the named
    dataloaders that the config defines, and that the folders hold images
    and label maps of the dataset's suffixes. A missing ``data_root`` is
    fine only where the dataset's class generates its data (see
    :func:`generates_data_at`). Remote paths (``s3://...``) are skipped.

    Args:
        cfg (Config): the config.
        loaders (Sequence[str]): e.g. ``('train_dataloader',
            'val_dataloader')``.

    Raises:
        FileNotFoundError: naming the missing path and how to prepare it.
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
            hints = [_PREPARE_HINTS.get(name)]
            generated = getattr(cls, 'generated_root', None)
            if generated:
                hints.insert(
                    0, f'{name} generates its files on first use only '
                    f"at '{generated}' (relative to the working directory)")
            hint = '; '.join(h for h in hints if h)
            raise FileNotFoundError(
                f'{loader} ({name}): {problem}. Prepare the dataset as '
                'described in README.md, section "Preparing datasets"' +
                (f': {hint}' if hint else '') +
                '. A dataset kept elsewhere can be linked there or given per '
                f'dataloader with --cfg-options {loader}.dataset.data_root='
                'PATH.')


def generates_data_at(dataset_cls: Optional[type],
                      data_root: Optional[str]) -> bool:
    """Whether ``dataset_cls`` creates its files at ``data_root`` on first
    use: its ``generated_root`` attribute (a path relative to the working
    directory) names the one folder where it does.

    Args:
        dataset_cls (type, optional): the dataset class.
        data_root (str, optional): the configured ``data_root``.
    """
    generated = getattr(dataset_cls, 'generated_root', None)
    return bool(generated and data_root) and (
        osp.abspath(data_root) == osp.abspath(generated))


def _missing_data(dataset: dict, cls: Optional[type]) -> Optional[str]:
    """What is missing for ``dataset`` (a config dict of class ``cls``),
    or None."""
    root = dataset.get('data_root') or ''
    if generates_data_at(cls, root) and not osp.exists(root):
        return None  # written on first use
    prefix = dataset.get('data_prefix') or {}
    img_dir = osp.join(root, prefix.get('img_path') or '')
    seg_dir = osp.join(root, prefix.get('seg_map_path') or '')
    folders = [root] if root else []
    folders += [
        osp.join(root, prefix[key]) for key in ('img_path', 'seg_map_path')
        if prefix.get(key)
    ]
    if dataset.get('ann_file'):
        folders.append(osp.join(root, dataset['ann_file']))
    for path in folders:
        if '://' not in path and not osp.exists(path):
            where = '' if osp.isabs(path) else f' (in {os.getcwd()})'
            unlabelled = (_UNLABELLED_HINT if prefix.get('seg_map_path')
                          and path == seg_dir else '')
            return f"'{path}' does not exist{where}{unlabelled}"
    img_suffix = dataset.get('img_suffix', _default_arg(cls, 'img_suffix'))
    if not dataset.get('ann_file') and img_suffix and '://' not in img_dir:
        if not _contains_file(img_dir, img_suffix):
            return (f"'{img_dir}' holds no '*{img_suffix}' image (other "
                    'suffixes: set the dataset\'s img_suffix)')
    suffix = dataset.get('seg_map_suffix', _default_arg(cls, 'seg_map_suffix'))
    if prefix.get('seg_map_path') and suffix and '://' not in seg_dir:
        if not _contains_file(seg_dir, suffix):
            return f"'{seg_dir}' holds no '*{suffix}' label map"
    return None


def _default_arg(cls: Optional[type], name: str):
    """Default of argument ``name`` of ``cls.__init__``, or None."""
    if cls is None:
        return None
    param = inspect.signature(cls.__init__).parameters.get(name)
    if param is None or param.default is param.empty:
        return None
    return param.default


def _contains_file(folder: str, suffix: str) -> bool:
    """Whether mmseg's listing of ``folder`` (recursive, as
    ``BaseSegDataset.load_data_list`` lists it) finds a file ending in
    ``suffix``; stops at the first one."""
    files = fileio.list_dir_or_file(
        folder, list_dir=False, suffix=suffix, recursive=True)
    return next(files, None) is not None
