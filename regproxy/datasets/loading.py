"""Image and label loading that names the file behind every failure
(docs/troubleshooting.md, "Bad images and labels"); images are read as
stored, their EXIF orientation tag ignored (docs/datasets.md)."""
import io
import logging
from typing import Dict, Optional, Sequence

import mmcv
import numpy as np
from mmcv.transforms import LoadImageFromFile
from mmengine import fileio
from mmengine.logging import print_log
from mmseg.datasets.transforms import LoadAnnotations
from mmseg.registry import TRANSFORMS
from PIL import Image

__all__ = [
    'CheckedLoadImageFromFile', 'CheckedLoadAnnotations', 'DataError',
    'use_checked_loaders'
]

_JPEG_START, _JPEG_END = b'\xff\xd8', b'\xff\xd9'
_PNG_START = b'\x89PNG\r\n\x1a\n'
_PNG_END = b'IEND\xaeB`\x82'  # the IEND chunk's type and CRC


class DataError(OSError, ValueError):
    """A sample the run cannot use (an unreadable file, a label map that
    does not fit its image or the classes), or a dataset whose classes are
    not the model's; the message names the file or the setting."""


def unturned_flag(flag: str, backend: Optional[str]) -> str:
    """The mmcv flag that decodes like ``flag`` (a ``color_type``) with
    ``backend`` (an ``imdecode_backend``) but ignores the EXIF orientation
    tag, which only the cv2 and pillow backends apply."""
    if backend in ('cv2', 'pillow') and flag in ('color', 'grayscale'):
        return f'{flag}_ignore_orientation'
    return flag


def is_truncated(data: bytes) -> bool:
    """Whether a JPEG or PNG file's ``data`` stops before its end marker
    (cv2 decodes the missing part as grey, silently); only a file without
    the marker is decoded, by Pillow, to tell a cut file from one with bytes
    after the marker."""
    if data.startswith(_JPEG_START):
        complete = data.rstrip(b'\x00\r\n ').endswith(_JPEG_END)
    else:  # a PNG, or another format: left to its decoder
        complete = not data.startswith(_PNG_START) or _PNG_END in data[-64:]
    if complete:
        return False
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except (OSError, SyntaxError, ValueError):
        return True
    return False


def to_class_ids(labels: np.ndarray,
                 reduce_zero_label: bool = False,
                 label_map: Optional[Dict[int, int]] = None) -> np.ndarray:
    """Integer label values as int64 class ids by mmseg's
    ``LoadAnnotations`` rules, the dataset's ``reduce_zero_label`` (0 and
    255 become 255, v becomes v - 1) then ``label_map`` (old -> new), but
    without its cast to uint8 first, which wraps 16-bit values."""
    ids = labels.astype(np.int64)
    if reduce_zero_label:
        ids = np.where((ids == 0) | (ids == 255), 255, ids - 1)
    if label_map:
        raw = ids.copy()
        for old_id, new_id in label_map.items():
            ids[raw == old_id] = new_id
    return ids


def _unreadable(kind: str, path: str, error: Exception, skip: bool) -> None:
    """Raise an error naming ``path`` or, when ``skip``, warn and return
    None, which makes mmengine's dataset draw another sample."""
    message = f'cannot read {kind} {path}: {type(error).__name__}: {error}'
    if not skip:
        raise DataError(message) from error
    print_log(f'{message}; skipped (ignore_empty=True)', 'current',
              level=logging.WARNING)


@TRANSFORMS.register_module()
class CheckedLoadImageFromFile(LoadImageFromFile):
    """``LoadImageFromFile`` whose errors name the file, reading images as
    stored (EXIF orientation ignored) and cut JPEGs/PNGs as unreadable; its
    ``ignore_empty=True`` skips such a file with a warning (mmengine's
    dataset then draws another sample)."""

    def transform(self, results: dict) -> Optional[dict]:
        path = results['img_path']
        try:
            data = fileio.get(path, backend_args=self.backend_args)
            if is_truncated(data):
                raise OSError('the file ends before its end marker '
                              '(truncated)')
            img = mmcv.imfrombytes(
                data,
                flag=unturned_flag(self.color_type, self.imdecode_backend),
                backend=self.imdecode_backend)
            if img is None:
                raise OSError('not a decodable image')
        except Exception as error:  # any decoder, any file backend
            return _unreadable('image', path, error, self.ignore_empty)
        if self.to_float32:
            img = img.astype(np.float32)
        results.update(img=img, img_shape=img.shape[:2],
                       ori_shape=img.shape[:2])
        return results


@TRANSFORMS.register_module()
class CheckedLoadAnnotations(LoadAnnotations):
    """mmseg's ``LoadAnnotations`` that checks the label map: the size of
    its image, one channel, after ``reduce_zero_label`` and ``label_map``
    class ids in ``[0, num_classes)`` or ``ignore_index``. Without a label
    map to load (mmseg's inference) it does nothing.

    Args:
        num_classes (int, optional): number of classes; None checks only
            that labels fit in uint8. Default: None.
        ignore_index (int): the label of ignored pixels. Default: 255.
        ignore_empty (bool): skip an unreadable file, as
            :class:`CheckedLoadImageFromFile`'s; label values out of range
            are always an error. Default: False.
        **kwargs: ``LoadAnnotations`` arguments.
    """

    def __init__(self,
                 num_classes: Optional[int] = None,
                 ignore_index: int = 255,
                 ignore_empty: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        if num_classes is not None and not 0 < num_classes <= 255:
            raise ValueError(
                f'num_classes must be in [1, 255] (labels are stored as '
                f'uint8), got {num_classes}')
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.ignore_empty = ignore_empty

    def transform(self, results: dict) -> Optional[dict]:
        path = results.get('seg_map_path')
        if path is None:
            return results
        try:
            labels = mmcv.imfrombytes(
                fileio.get(path, backend_args=self.backend_args),
                flag='unchanged', backend=self.imdecode_backend)
            if labels is None:
                raise OSError('not a decodable image')
        except Exception as error:
            return _unreadable('label map', path, error, self.ignore_empty)
        image_shape = results.get('ori_shape')
        if image_shape is not None and tuple(labels.shape[:2]) != tuple(
                image_shape):
            # images are read as stored, their EXIF orientation tag ignored
            hint = (' Its sides are swapped: if the image has an EXIF '
                    'orientation tag, the label map was drawn on the turned '
                    'image; save the image turned (PIL '
                    'ImageOps.exif_transpose) without the tag.'
                    if tuple(labels.shape[:2]) == tuple(image_shape)[::-1]
                    else '')
            raise DataError(
                f'label map {path} is {labels.shape[0]}x{labels.shape[1]} '
                f'but its image {results.get("img_path")} is '
                f'{image_shape[0]}x{image_shape[1]}: they must have the '
                f'same size.{hint}')
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
            raise DataError(
                f'label map {path} is {labels.dtype} of shape {raw_shape}; '
                'expected one channel of integer class ids')
        # The dataset's: mmseg deprecates the transform's reduce_zero_label.
        reduce_zero_label = results.get('reduce_zero_label', False)
        labels = to_class_ids(labels, reduce_zero_label,
                              results.get('label_map'))
        limit = self.num_classes or 256  # None: what uint8 holds
        bad = ((labels < 0) | (labels >= limit)) & (
            labels != self.ignore_index)
        expected = (f'in [0, {limit}) or the ignore index {self.ignore_index}'
                    if self.num_classes else 'in [0, 255] (stored as uint8)')
        if bad.any():
            values = np.unique(labels[bad])
            shown = ', '.join(str(v) for v in values[:8])
            reduced = ' after reduce_zero_label' if reduce_zero_label else ''
            raise DataError(
                f'label map {path} has values {shown}'
                f'{" ..." if len(values) > 8 else ""}{reduced}; expected '
                f'{expected}. Check num_classes and reduce_zero_label, and '
                'that labels hold class ids rather than colours')
        return labels.astype(np.uint8)


def use_checked_loaders(cfg, loaders: Sequence[str]) -> None:
    """Swap mmcv's ``LoadImageFromFile`` for :class:`CheckedLoadImageFromFile`
    in the ``loaders`` (e.g. ``('val_dataloader', )``) of ``cfg``, in place
    and ``TestTimeAug`` included: test pipelines name the stock one, which
    mmseg's ``MMSegInferencer`` looks up by name."""

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
