"""Checks of one segmentation sample on disk, read as the pipeline reads it.

:func:`check_sample` reads an image and its label map with the decoders that
the pipeline uses (``LoadImageFromFile``'s and ``LoadAnnotations``'
``imdecode_backend``), applies the dataset's ``reduce_zero_label`` and
``label_map`` as mmseg does, and returns what is wrong with the pair together
with its per-class pixel counts. It is a plain function of file names and
settings, so that ``tools/misc/check_dataset.py`` can run it in worker
processes.

What it finds (the ``kind`` of a :class:`Problem`):

- ``unreadable``: missing, empty or undecodable file;
- ``truncated``: a JPEG or PNG whose data ends early (cv2 decodes a cut JPEG
  without an error and fills the rest with grey);
- ``size mismatch``: image and label map of different height or width;
- ``colour label map``: a label map with more than one channel;
- ``label values``: class ids outside ``[0, num_classes)`` other than the
  ignore index, after ``reduce_zero_label`` and ``label_map``, or labels
  that are not integers.
"""
import io
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import mmcv
import numpy as np
from mmengine import fileio
from PIL import Image

__all__ = [
    'Problem', 'SampleCheck', 'check_sample', 'check_sample_kwargs',
    'map_label_counts'
]

_JPEG_START = b'\xff\xd8'
_JPEG_END = b'\xff\xd9'
_PNG_START = b'\x89PNG\r\n\x1a\n'
_PNG_END = b'IEND\xaeB`\x82'  # the IEND chunk's type and CRC


@dataclass
class Problem:
    """One thing wrong with a file.

    Args:
        kind (str): ``unreadable``, ``truncated``, ``size mismatch``,
            ``colour label map``, ``label values`` (or, from the tool,
            ``empty split``, ``dataset``, ``config``).
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
    """The result of :func:`check_sample`.

    Args:
        img_path (str): the image.
        seg_map_path (str, optional): its label map.
        problems (list[Problem]): empty when the pair is fine.
        class_pixels (np.ndarray, optional): (num_classes, ) int64 pixel
            count per class; None when the label map could not be checked.
        ignored_pixels (int): pixels labelled with the ignore index.
    """
    img_path: str
    seg_map_path: Optional[str]
    problems: List[Problem] = field(default_factory=list)
    class_pixels: Optional[np.ndarray] = None
    ignored_pixels: int = 0


def is_truncated(data: bytes) -> bool:
    """Whether a JPEG or PNG file's data stops before its end marker.

    The end marker is checked first (cheap); only a file without it is
    decoded in full with Pillow, which tells a cut file from one with extra
    bytes after the marker. Other formats are left to their decoder.
    """
    if data.startswith(_JPEG_START):
        complete = data.rstrip(b'\x00\r\n ').endswith(_JPEG_END)
    elif data.startswith(_PNG_START):
        complete = data[-64:].find(_PNG_END) >= 0
    else:
        return False
    if complete:
        return False
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except (OSError, SyntaxError, ValueError):
        return True
    return False


def _read(path: str, kind: str, problems: List[Problem],
          backend_args: Optional[dict]) -> Optional[bytes]:
    """The bytes of a complete file, or None after recording a problem."""
    try:
        data = fileio.get(path, backend_args=backend_args)
    except Exception as error:  # any file backend
        problems.append(Problem('unreadable', path,
                                f'cannot read the {kind}: '
                                f'{type(error).__name__}: {error}'))
        return None
    if not data:
        problems.append(Problem('unreadable', path, f'the {kind} is empty '
                                '(0 bytes)'))
        return None
    if is_truncated(data):
        problems.append(
            Problem('truncated', path,
                    f'the {kind} ends early ({len(data)} bytes, no end '
                    'marker); decoders fill the missing part or fail: '
                    'copy or download it again'))
        return None
    return data


def _decode(data: bytes, path: str, kind: str, flag: str, backend: str,
            problems: List[Problem]) -> Optional[np.ndarray]:
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
    return array


def map_label_counts(
        values: np.ndarray,
        counts: np.ndarray,
        num_classes: int,
        ignore_index: int = 255,
        reduce_zero_label: bool = False,
        label_map: Optional[Dict[int, int]] = None
) -> Tuple[np.ndarray, int, Dict[int, Tuple[int, int]]]:
    """Turn counts of raw label values into counts per class.

    The raw values go through ``reduce_zero_label`` (0 and 255 become the
    ignore label 255, every other value v becomes v - 1) and then
    ``label_map`` (old id -> new id, all at once), as in mmseg's
    ``LoadAnnotations``.

    Args:
        values (np.ndarray): distinct raw label values.
        counts (np.ndarray): the number of pixels of each value.
        num_classes (int): class ids are ``0 .. num_classes - 1``.
        ignore_index (int): the label of ignored pixels. Default: 255.
        reduce_zero_label (bool): as the dataset's. Default: False.
        label_map (dict, optional): as the dataset's. Default: None.

    Returns:
        tuple: (class_pixels, ignored_pixels, bad) where ``class_pixels`` is
        a (num_classes, ) int64 array, ``ignored_pixels`` an int and ``bad``
        maps every value outside the classes and the ignore index (after
        mapping) to ``(raw value, pixels)``.
    """
    values = np.asarray(values, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    mapped = values.copy()
    if reduce_zero_label:
        mapped = np.where((values == 0) | (values == 255), 255, values - 1)
    if label_map:
        mapped = np.array([label_map.get(int(v), int(v)) for v in mapped],
                          dtype=np.int64)
    class_pixels = np.zeros(num_classes, dtype=np.int64)
    valid = (mapped >= 0) & (mapped < num_classes)
    np.add.at(class_pixels, mapped[valid], counts[valid])
    ignored = mapped == ignore_index
    bad = {}
    for value, raw, count in zip(mapped[~valid & ~ignored],
                                 values[~valid & ~ignored],
                                 counts[~valid & ~ignored]):
        old = bad.get(int(value), (int(raw), 0))
        bad[int(value)] = (old[0], old[1] + int(count))
    return class_pixels, int(counts[ignored].sum()), bad


def _value_counts(labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    if labels.dtype == np.uint8 or labels.dtype == np.uint16:
        counts = np.bincount(labels.ravel())
        values = np.flatnonzero(counts)
        return values, counts[values]
    return np.unique(labels, return_counts=True)


def _check_labels(labels: np.ndarray, path: str, result: SampleCheck,
                  num_classes: int, ignore_index: int,
                  reduce_zero_label: bool,
                  label_map: Optional[Dict[int, int]]) -> None:
    """Channel, type and value checks of a decoded label map."""
    if labels.ndim == 3 and labels.shape[2] == 1:
        labels = labels[..., 0]
    if labels.ndim != 2:
        channels = labels.shape[2] if labels.ndim == 3 else '?'
        same = labels.ndim == 3 and all(
            np.array_equal(labels[..., 0], labels[..., c])
            for c in range(1, labels.shape[2]))
        hint = ('its channels are identical: save the class ids as one '
                'channel (grey or palette PNG)' if same else
                'convert the colours to class ids with the dataset\'s '
                'palette')
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
    values, counts = _value_counts(labels)
    class_pixels, ignored, bad = map_label_counts(
        values, counts, num_classes, ignore_index, reduce_zero_label,
        label_map)
    result.class_pixels = class_pixels
    result.ignored_pixels = ignored
    if bad:
        shown = ', '.join(
            f'{value}' + (f' (raw {raw})' if raw != value else '') +
            f': {pixels} px' for value, (raw, pixels) in sorted(bad.items())
            [:8])
        more = f' and {len(bad) - 8} more' if len(bad) > 8 else ''
        steps = [name for name, on in (('reduce_zero_label',
                                        reduce_zero_label),
                                       ('label_map', bool(label_map))) if on]
        after = f' after {" and ".join(steps)}' if steps else ''
        result.problems.append(Problem(
            'label values', path,
            f'values {shown}{more}{after}; '
            f'expected class ids in [0, {num_classes}) or {ignore_index} '
            '(ignored): check num_classes and reduce_zero_label, and that '
            'the labels hold class ids, not colours'))


def check_sample(img_path: str,
                 seg_map_path: Optional[str],
                 num_classes: int,
                 ignore_index: int = 255,
                 reduce_zero_label: bool = False,
                 label_map: Optional[Dict[int, int]] = None,
                 img_backend: str = 'cv2',
                 img_flag: str = 'color',
                 label_backend: str = 'pillow',
                 backend_args: Optional[dict] = None) -> SampleCheck:
    """Read one image and its label map and check them.

    Args:
        img_path (str): the image.
        seg_map_path (str, optional): its label map; None checks the image
            only.
        num_classes (int): number of classes of the dataset.
        ignore_index (int): label of ignored pixels. Default: 255.
        reduce_zero_label (bool): as the dataset's. Default: False.
        label_map (dict, optional): as the dataset's. Default: None.
        img_backend (str): ``LoadImageFromFile``'s ``imdecode_backend``.
            Default: 'cv2'.
        img_flag (str): ``LoadImageFromFile``'s ``color_type``.
            Default: 'color'.
        label_backend (str): ``LoadAnnotations``' ``imdecode_backend``.
            Default: 'pillow'.
        backend_args (dict, optional): mmengine file backend arguments.

    Returns:
        SampleCheck: the problems found and the per-class pixel counts.
    """
    result = SampleCheck(img_path, seg_map_path)
    image = None
    data = _read(img_path, 'image', result.problems, backend_args)
    if data is not None:
        image = _decode(data, img_path, 'image', img_flag, img_backend,
                        result.problems)
    if seg_map_path is None:
        return result
    data = _read(seg_map_path, 'label map', result.problems, backend_args)
    if data is None:
        return result
    labels = _decode(data, seg_map_path, 'label map', 'unchanged',
                     label_backend, result.problems)
    if labels is None:
        return result
    if image is not None and image.shape[:2] != labels.shape[:2]:
        result.problems.append(Problem(
            'size mismatch', seg_map_path,
            f'label map is {labels.shape[0]}x{labels.shape[1]} (HxW), its '
            f'image {img_path} {image.shape[0]}x{image.shape[1]}; expected '
            'the same size'))
    _check_labels(labels, seg_map_path, result, num_classes, ignore_index,
                  reduce_zero_label, label_map)
    return result


def check_sample_kwargs(kwargs: dict) -> SampleCheck:
    """``check_sample(**kwargs)``: one argument, for process pools' map."""
    return check_sample(**kwargs)
