"""The synthetic shapes dataset, generated on first use: photo-like scenes
whose objects of seven classes differ in silhouette and texture only, in
ADE20K's layout (see docs/datasets.md, "The shapes dataset").
"""
import json
import logging
import os
import os.path as osp
import shutil
import tempfile
from typing import Tuple

import cv2
import mmcv
import numpy as np
from mmengine.logging import print_log
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from .data_roots import generates_data_at

__all__ = ['ShapesDataset', 'generate_shapes_dataset']

CLASSES = ('background', 'circle', 'rectangle', 'triangle', 'ellipse', 'star',
           'ring', 'cross')
PALETTE = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25],
           [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240]]
IGNORE_INDEX = 255
# Raised whenever the generator's images or labels change; generator.json
# records it with the arguments.
GENERATOR_VERSION = 2
GENERATOR_FILE = 'generator.json'
# Where ShapesDataset generates missing data: the base config's data_root.
DEFAULT_ROOT = 'data/shapes'
SPLITS = ('training', 'validation')
SIDES = (96, 112, 128, 144, 160)  # image heights and widths, drawn apart
MAX_OBJECTS = 5  # per image, at least one
RADIUS = (0.15, 0.32)  # object size, as a fraction of the short image side
# Saturation and brightness (HSV value) of the colours of objects and
# clutter, whatever their class; hues are uniform.
SATURATION = (0.35, 1.)
VALUE = (0.3, 1.)
TONE_STEP = (0.3, 0.45)  # brightness difference between the two tones
TEXTURE_PERIOD = (6., 10.)  # pixels
BACKGROUND_SATURATION = (0., 0.6)
BACKGROUND_VALUE = (0.2, 0.9)


def _color(rng: np.random.Generator,
           hue: float,
           saturation: Tuple[float, float],
           value: Tuple[float, float]) -> np.ndarray:
    """BGR colour in [0, 255]: hue in degrees, S/V ranges within [0, 1]."""
    hsv = np.array([[[hue % 360, rng.uniform(*saturation),
                      rng.uniform(*value)]]], np.float32)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0] * 255


def _two_tones(rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Two BGR colours of one object: a random tone and one that differs
    mostly in brightness (and a little in hue)."""
    hue = rng.uniform(0, 360)
    saturation = rng.uniform(*SATURATION)
    value = rng.uniform(*VALUE)
    tone = _color(rng, hue, (saturation, saturation), (value, value))
    value += rng.uniform(*TONE_STEP) * (-1 if value > 0.65 else 1)
    value = min(value, 1.)
    other = _color(rng, hue + rng.uniform(-20, 20), (saturation, saturation),
                   (value, value))
    return tone, other


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int,
                  channels: int) -> np.ndarray:
    """(h, w, channels) low-frequency noise with unit-ish amplitude."""
    coarse = rng.standard_normal((cells, cells, channels), np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).reshape(
        h, w, channels)


def _ramp(h: int, w: int, angle: float) -> np.ndarray:
    """(h, w) linear ramp from 0 to 1 along ``angle`` (radians)."""
    yy, xx = np.indices((h, w), dtype=np.float32)
    t = xx * np.cos(angle) + yy * np.sin(angle)
    return (t - t.min()) / (t.max() - t.min() + 1e-6)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Muted two-colour gradient with blotches, an optional texture and
    clutter (lines, dots, scribbles) that belongs to the background class."""
    c0, c1 = (_color(rng, rng.uniform(0, 360), BACKGROUND_SATURATION,
                     BACKGROUND_VALUE) for _ in range(2))
    t = _ramp(h, w, rng.uniform(0, 2 * np.pi))[..., None]
    img = c0 * (1 - t) + c1 * t
    # Blotches mostly in brightness, a little in colour.
    cells = int(rng.integers(3, 9))
    img += rng.uniform(5, 30) * _smooth_noise(rng, h, w, cells, 1)
    img += rng.uniform(2, 10) * _smooth_noise(rng, h, w, cells, 3)
    texture = rng.integers(3)
    if texture == 1:  # stripes, as on fabric or tiles
        period = rng.uniform(4, 14)
        phase = _ramp(h, w, rng.uniform(0, np.pi)) * max(h, w)
        img += rng.uniform(6, 20) * np.sin(2 * np.pi * phase / period)[...,
                                                                       None]
    elif texture == 2:  # fine grain, as on sand or carpet
        img += rng.uniform(6, 18) * rng.standard_normal((h, w, 1), np.float32)
    for _ in range(rng.integers(2, 10)):
        color = _color(rng, rng.uniform(0, 360), SATURATION, VALUE).tolist()
        p = rng.uniform((0, 0), (w, h)).astype(np.int32)
        kind = rng.integers(3)
        if kind == 0:
            q = rng.uniform((0, 0), (w, h)).astype(np.int32)
            cv2.line(img, tuple(p.tolist()), tuple(q.tolist()), color,
                     int(rng.integers(1, 3)), cv2.LINE_AA)
        elif kind == 1:
            cv2.circle(img, tuple(p.tolist()), int(rng.integers(1, 4)), color,
                       -1, cv2.LINE_AA)
        else:
            pts = p + np.cumsum(rng.integers(-12, 13, (4, 2)), axis=0)
            cv2.polylines(img, [pts.astype(np.int32)], False, color, 1,
                          cv2.LINE_AA)
    return img


def _polar(radii: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """(N, 2) x, y points from N radii and angles (radians)."""
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _shape_mask(rng: np.random.Generator, cls: int, h: int, w: int,
                center: np.ndarray, r: float) -> np.ndarray:
    """(h, w) uint8 mask (0/1) of one object of class ``cls``, radius ~r."""
    mask = np.zeros((h, w), np.uint8)
    angle = rng.uniform(0, 2 * np.pi)
    name = CLASSES[cls]
    cx, cy = center.round().astype(int).tolist()
    if name in ('circle', 'ring'):
        cv2.circle(mask, (cx, cy), int(round(r)), 1, -1)
        if name == 'ring':
            # A band half to two thirds of r wide: room for a texture.
            cv2.circle(mask, (cx, cy), int(round(r * rng.uniform(0.35, 0.5))),
                       0, -1)
        return mask
    if name == 'ellipse':
        # Axis ratio far from 1 keeps ellipses apart from circles.
        axes = (int(round(r)), int(round(r * rng.uniform(0.38, 0.55))))
        cv2.ellipse(mask, (cx, cy), axes, np.degrees(angle), 0, 360, 1, -1)
        return mask
    if name == 'rectangle':
        a, b = r * 0.85, r * 0.85 * rng.uniform(0.45, 1.)
        pts = np.array([[-a, -b], [a, -b], [a, b], [-a, b]])
    elif name == 'triangle':
        corners = np.arange(3) * 2 * np.pi / 3 + rng.uniform(-0.3, 0.3, 3)
        pts = _polar(r * rng.uniform(0.9, 1.15, 3), corners)
    elif name == 'star':
        tips = int(rng.integers(5, 7))
        radii = np.tile([r * 1.1, r * rng.uniform(0.5, 0.65)], tips)
        pts = _polar(radii, np.arange(2 * tips) * np.pi / tips)
    else:  # cross: a plus sign, arms of half-width t and length r
        t = r * rng.uniform(0.3, 0.4)
        pts = np.array([[-t, -r], [t, -r], [t, -t], [r, -t], [r, t], [t, t],
                        [t, r], [-t, r], [-t, t], [-r, t], [-r, -t],
                        [-t, -t]])
    c, s = np.cos(angle), np.sin(angle)
    pts = pts @ np.array([[c, s], [-s, c]]) + center
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask


def _texture(rng: np.random.Generator, kind: int, h: int,
             w: int) -> np.ndarray:
    """(h, w) float32 weight in {0, 1} of the second tone of texture
    ``kind``: plain, horizontal stripes, vertical stripes, checks, dots,
    diamonds or grid. Patterns keep their orientation in the image (and
    look the same mirrored left to right, as RandomFlip shows them); their
    period and phase vary."""
    period = rng.uniform(*TEXTURE_PERIOD)
    yy, xx = np.indices((h, w), dtype=np.float32) + rng.uniform(
        0, period, (2, 1, 1)).astype(np.float32)
    u, v = (2 * np.pi / period) * xx, (2 * np.pi / period) * yy
    patterns = (
        lambda: np.zeros((h, w), bool),
        lambda: np.sin(v) > 0,
        lambda: np.sin(u) > 0,
        lambda: np.sin(u) * np.sin(v) > 0,
        lambda: np.cos(u) + np.cos(v) > 1.2,
        lambda: np.sin((u + v) / 2) * np.sin((u - v) / 2) > 0,
        lambda: np.maximum(np.cos(u), np.cos(v)) > 0.8,
    )
    return patterns[kind]().astype(np.float32)


def _paint_object(rng: np.random.Generator, img: np.ndarray, cls: int,
                  mask: np.ndarray, center: np.ndarray, r: float):
    """Composite a shaded, textured object with a soft edge and a drop
    shadow onto ``img`` (float, in place)."""
    # Work in the object's box, grown to hold the shadow and the soft edge.
    x, y, bw, bh = cv2.boundingRect(mask)
    x0, y0 = max(x - 12, 0), max(y - 12, 0)
    x1, y1 = min(x + bw + 12, img.shape[1]), min(y + bh + 12, img.shape[0])
    window = img[y0:y1, x0:x1]
    mask = mask[y0:y1, x0:x1].astype(np.float32)
    h, w = mask.shape
    if rng.random() < 0.5:
        offset = rng.integers(2, 6, 2) * rng.choice((-1, 1), 2)
        shift = np.float32([[1, 0, offset[0]], [0, 1, offset[1]]])
        shadow = cv2.GaussianBlur(
            cv2.warpAffine(mask, shift, (w, h)), (0, 0), 2.)
        window *= 1 - rng.uniform(0.2, 0.45) * shadow[..., None]
    tone, other = _two_tones(rng)
    weight = _texture(rng, cls - 1, h, w)[..., None]
    paint = tone * (1 - weight) + other * weight
    # Light falls from one side; blotches mimic material texture.
    yy, xx = np.indices((h, w), dtype=np.float32)
    light = rng.uniform(0, 2 * np.pi)
    along = ((xx + x0 - center[0]) * np.cos(light) +
             (yy + y0 - center[1]) * np.sin(light)) / r
    shading = 1 + rng.uniform(0.05, 0.3) * np.clip(along, -1.5, 1.5)
    paint *= shading[..., None]
    paint += rng.uniform(3, 12) * _smooth_noise(rng, h, w, 6, 1)
    alpha = cv2.GaussianBlur(mask, (0, 0), rng.uniform(0.5, 1.0))[..., None]
    window *= 1 - alpha
    window += alpha * paint


def _render_sample(rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """One (H, W, 3) uint8 BGR image and its (H, W) uint8 label map."""
    h, w = (int(s) for s in rng.choice(SIDES, 2))
    img = _background(rng, h, w)
    instances = np.zeros((h, w), np.int32)  # 0: background, k: object k
    classes = [0]
    areas = [0]
    for _ in range(rng.integers(1, MAX_OBJECTS + 1)):
        cls = int(rng.integers(1, len(CLASSES)))
        r = rng.uniform(*RADIUS) * min(h, w)
        # Re-draw the position until the object is mostly inside the image
        # and leaves at least 60% of every earlier object visible.
        m = int(np.ceil(1.2 * r))  # the whole object fits in this margin
        for _ in range(10):
            center = rng.uniform((0.1 * w, 0.1 * h), (0.9 * w, 0.9 * h))
            whole = _shape_mask(rng, cls, h + 2 * m, w + 2 * m, center + m, r)
            mask = whole[m:m + h, m:m + w]
            area = int(mask.sum())
            if area < 0.7 * whole.sum():
                continue
            left = np.bincount(
                instances[mask == 0], minlength=len(areas))[1:]
            if np.all(left >= 0.6 * np.array(areas[1:])):
                break
        else:
            continue
        _paint_object(rng, img, cls, mask, center, r)
        instances[mask > 0] = len(areas)
        classes.append(cls)
        areas.append(area)
    # Camera: uneven illumination, slight defocus, sensor noise, JPEG later.
    img *= (1 + 0.12 * _smooth_noise(rng, h, w, 2, 1))
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 0.8))
    img += rng.uniform(2, 8) * rng.standard_normal(img.shape, np.float32)
    image = np.clip(img, 0, 255).astype(np.uint8)
    label = np.array(classes, np.uint8)[instances]
    # Boundary pixels are ambiguous (soft edges, JPEG): ignore a thin band.
    kernel = np.ones((3, 3), np.uint8)
    border = cv2.dilate(label, kernel) != cv2.erode(label, kernel)
    label[border] = IGNORE_INDEX
    return image, label


def generate_shapes_dataset(root: str,
                            num_train: int = 1000,
                            num_val: int = 200,
                            seed: int = 0) -> str:
    """Write the shapes dataset to ``root`` (which must not exist yet) and
    return ``root``; ``generator.json`` records the version and arguments.

    A temporary sibling folder is renamed to ``root`` at the end: an
    interrupted run leaves no half dataset, and when another process made
    ``root`` meanwhile, its copy is kept.

    Args:
        root (str): dataset folder to create.
        num_train (int): number of training samples. Default: 1000.
        num_val (int): number of validation samples. Default: 200.
        seed (int): the same seed gives byte-identical files. Default: 0.
    """
    root = osp.abspath(root)
    if osp.exists(root):
        raise FileExistsError(f'{root} exists; remove it to regenerate')
    parent = osp.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{osp.basename(root)}-', dir=parent)
    try:
        for split_id, (split, num) in enumerate(
                zip(SPLITS, (num_train, num_val))):
            for i in range(num):
                # One stream per sample: a sample depends on (seed, split,
                # index) only, not on how many samples come before it.
                rng = np.random.default_rng([seed, split_id, i])
                image, label = _render_sample(rng)
                name = f'{split}/shapes_{split}_{i:05d}'
                quality = int(rng.integers(75, 96))
                # mmcv.imwrite creates the folders
                mmcv.imwrite(image, f'{tmp}/images/{name}.jpg',
                             [cv2.IMWRITE_JPEG_QUALITY, quality])
                mmcv.imwrite(label, f'{tmp}/annotations/{name}.png')
        with open(osp.join(tmp, GENERATOR_FILE), 'w') as f:
            json.dump(dict(version=GENERATOR_VERSION, seed=seed,
                           num_train=num_train, num_val=num_val), f)
        os.chmod(tmp, 0o755)  # mkdtemp creates it private
        try:
            os.rename(tmp, root)
        except OSError:
            if not osp.isdir(root):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


@DATASETS.register_module()
class ShapesDataset(BaseSegDataset):
    """The synthetic shapes dataset (8 classes, background included),
    generated on first use at :data:`DEFAULT_ROOT` only (elsewhere, a
    mistyped path is a missing-data error); distributed ranks may all
    generate it, the atomic rename keeps one copy.
    """
    METAINFO = dict(classes=CLASSES, palette=PALETTE)
    generated_root = DEFAULT_ROOT  # read by check_data_roots

    def load_data_list(self) -> list:
        """Generate missing data at the default root; list it as mmseg."""
        root = self.data_root
        if root and not osp.isdir(root) and generates_data_at(
                type(self), root):
            # Relative to the working directory: say where it goes.
            print_log(
                f'ShapesDataset: no data at {root!r}; generating the shapes '
                f'dataset in {osp.abspath(root)} (relative to the working '
                f'directory {os.getcwd()}). To use one copy from any folder, '
                'set data_root to that path.', 'current', logging.WARNING)
            try:
                generate_shapes_dataset(root)
            except FileExistsError:
                pass  # another process finished it in the meantime
        return super().load_data_list()
