"""Image and label loading that names the file behind every failure.

mmcv's and mmseg's loaders report an unreadable label map as
``'NoneType' object has no attribute 'squeeze'`` and store labels as uint8
without looking at them: a 16-bit label of 300 silently becomes 44, and a
class id past ``num_classes`` surfaces as an index error in the loss, or as
a device-side assert on a GPU, without a file name. These loaders check
while the file name is at hand.
"""
import logging
from typing import Optional

import mmcv
import numpy as np
from mmcv.transforms import LoadImageFromFile
from mmengine import fileio
from mmengine.logging import print_log
from mmseg.datasets.transforms import LoadAnnotations
from mmseg.registry import TRANSFORMS

from ..checks import is_truncated

__all__ = [
    'CheckedLoadImageFromFile', 'CheckedLoadAnnotations', 'use_checked_loaders'
]


def _unreadable(kind: str, path: str, error: Exception,
                skip: bool) -> None:
    """Raise an error naming ``path`` or, when ``skip``, warn and return
    None, which makes mmengine's dataset draw another sample (training)."""
    # mmcv asserts when its cv2 decoder returns nothing
    cause = ('not a decodable image' if isinstance(error, AssertionError)
             else f'{type(error).__name__}: {error}')
    message = f'cannot read {kind} {path}: {cause}'
    if not skip:
        raise OSError(message) from error
    print_log(f'{message}; skipped (skip_unreadable=True)', 'current',
              level=logging.WARNING)


@TRANSFORMS.register_module()
class CheckedLoadImageFromFile(LoadImageFromFile):
    """``LoadImageFromFile`` whose errors name the file.

    Grayscale, RGBA and 16-bit files load as 8-bit 3-channel images (the
    default ``color_type='color'``).

    Args:
        skip_unreadable (bool): warn and skip a missing or undecodable file
            instead of failing. Only training can skip (mmengine's dataset
            then draws another sample); test sets are scored whole.
            Default: False.
        **kwargs: ``LoadImageFromFile`` arguments.
    """

    def __init__(self, skip_unreadable: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.skip_unreadable = skip_unreadable

    def transform(self, results: dict) -> Optional[dict]:
        path = results['img_path']
        try:
            data = fileio.get(path, backend_args=self.backend_args)
            # cv2 fills the missing part of a cut JPEG with grey, silently
            if is_truncated(data):
                raise OSError('the file ends before its end marker '
                              '(truncated)')
            img = mmcv.imfrombytes(data, flag=self.color_type,
                                   backend=self.imdecode_backend)
        except Exception as error:  # any decoder, any file backend
            return _unreadable('image', path, error, self.skip_unreadable)
        if img is None:
            return _unreadable('image', path, AssertionError(),
                               self.skip_unreadable)
        if self.to_float32:
            img = img.astype(np.float32)
        results.update(img=img, img_shape=img.shape[:2],
                       ori_shape=img.shape[:2])
        return results


@TRANSFORMS.register_module()
class CheckedLoadAnnotations(LoadAnnotations):
    """mmseg's ``LoadAnnotations`` with the label map checked on loading.

    The label map must be a single-channel integer image. After the
    dataset's ``reduce_zero_label`` and ``label_map`` are applied, every
    value must be a class id in ``[0, num_classes)`` or ``ignore_index``.
    Without labels to load (``inference_model`` on an image) it does
    nothing, so mmseg's inference APIs work with pipelines that use it.

    Args:
        num_classes (int, optional): number of classes; None checks only
            that labels fit in uint8. Default: None.
        ignore_index (int): the label of ignored pixels. Default: 255.
        skip_unreadable (bool): as in :class:`CheckedLoadImageFromFile`.
            Label values out of range are always an error. Default: False.
        **kwargs: ``LoadAnnotations`` arguments.
    """

    def __init__(self,
                 num_classes: Optional[int] = None,
                 ignore_index: int = 255,
                 skip_unreadable: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        if num_classes is not None and not 0 < num_classes <= 255:
            raise ValueError(
                f'num_classes must be in [1, 255] (labels are stored as '
                f'uint8), got {num_classes}')
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.skip_unreadable = skip_unreadable

    def transform(self, results: dict) -> Optional[dict]:
        path = results.get('seg_map_path')
        if path is None:
            return results
        try:
            labels = mmcv.imfrombytes(
                fileio.get(path, backend_args=self.backend_args),
                flag='unchanged',
                backend=self.imdecode_backend)
        except Exception as error:
            return _unreadable('label map', path, error, self.skip_unreadable)
        image_shape = results.get('ori_shape')
        if image_shape is not None and tuple(labels.shape[:2]) != tuple(
                image_shape):
            raise ValueError(
                f'label map {path} is {labels.shape[0]}x{labels.shape[1]} '
                f'but its image {results.get("img_path")} is '
                f'{image_shape[0]}x{image_shape[1]}: they must have the '
                'same size')
        results['gt_seg_map'] = self._checked_labels(labels, path, results)
        results['seg_fields'].append('gt_seg_map')
        return results

    def _checked_labels(self, labels: np.ndarray, path: str,
                        results: dict) -> np.ndarray:
        """Validate a decoded label map; apply reduce_zero_label and
        label_map as mmseg does; return it as uint8."""
        raw_shape = labels.shape
        if labels.ndim == 3 and labels.shape[2] == 1:
            labels = labels[..., 0]
        if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f'label map {path} is {labels.dtype} of shape {raw_shape}; '
                'expected one channel of integer class ids')
        reduce_zero_label = results.get('reduce_zero_label', False)
        if self.reduce_zero_label not in (None, reduce_zero_label):
            raise ValueError(
                f'LoadAnnotations has reduce_zero_label='
                f'{self.reduce_zero_label} but the dataset has '
                f'{reduce_zero_label}: set it on the dataset only')
        labels = labels.astype(np.int32)
        if reduce_zero_label:
            # 0 ("other") and 255 both become the ignore label.
            ignored = (labels == 0) | (labels == 255)
            labels = np.where(ignored, 255, labels - 1)
        if results.get('label_map'):
            mapped = labels.copy()
            for old_id, new_id in results['label_map'].items():
                mapped[labels == old_id] = new_id
            labels = mapped
        if self.num_classes is None:
            bad = (labels < 0) | (labels > 255)
            expected = 'in [0, 255] (stored as uint8)'
        else:
            bad = ((labels < 0) | (labels >= self.num_classes)) & (
                labels != self.ignore_index)
            expected = (f'in [0, {self.num_classes}) or the ignore index '
                        f'{self.ignore_index}')
        if bad.any():
            values = np.unique(labels[bad])
            shown = ', '.join(str(v) for v in values[:8])
            reduced = ' after reduce_zero_label' if reduce_zero_label else ''
            raise ValueError(
                f'label map {path} has values {shown}'
                f'{" ..." if len(values) > 8 else ""}{reduced}; expected '
                f'{expected}. Check num_classes and reduce_zero_label, and '
                'that labels hold class ids rather than colours')
        return labels.astype(np.uint8)


def use_checked_loaders(cfg, loaders) -> None:
    """Load images with :class:`CheckedLoadImageFromFile` in the named
    dataloaders of ``cfg`` (in place, ``TestTimeAug`` included).

    Test pipelines name mmcv's ``LoadImageFromFile``, which mmseg's
    ``MMSegInferencer`` looks up by name to replace; ``train.py`` and
    ``test.py`` swap in the checked loader for the datasets they score.

    Args:
        cfg (Config): the config.
        loaders (Sequence[str]): e.g. ``('val_dataloader', )``.
    """

    def swap(node):
        if isinstance(node, dict):
            if node.get('type') == 'LoadImageFromFile':
                node['type'] = 'CheckedLoadImageFromFile'
            for value in node.values():
                swap(value)
        elif isinstance(node, list):
            for value in node:
                swap(value)

    for loader in loaders:
        if cfg.get(loader):
            swap(cfg[loader]['dataset'])
