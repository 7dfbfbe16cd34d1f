"""Segment one image with a RegionProxy model and picture its region proxies.

    python tools/demo.py IMAGE CONFIG CHECKPOINT --out DIR [--device cpu]
        [--dtype float32|bfloat16] [--opacity 0.5] [--cfg-options ...]

Writes three pictures of the image's size into DIR:

- ``<name>_seg.png``: the predicted classes in the dataset's palette over the
  image (``mmseg.apis.inference_model``, the config's test mode);
- ``<name>_regions.png``: the region proxies as superpixels: every pixel
  belongs to the neighbouring token with its largest affinity (the argmax over
  the 9 neighbours of ``ProxyHead.affinity``, as an absolute token index),
  outlined over the image;
- ``<name>_tokens.png``: the class of every token (the argmax of its region
  logits), one colour block per token over the image.

The last two come from one whole-image pass over the test pipeline's resized
image; the head's internals are read through forward hooks, so any
RegionProxy checkpoint works unchanged. The image is read as ``train.py``
and ``test.py`` read it (``CheckedLoadImageFromFile``): as stored, its EXIF
orientation tag ignored, and a cut file stops the demo with its name.
"""
import argparse
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import mmcv
import numpy as np
import torch
from mmengine.config import ConfigDict, DictAction
from mmseg.apis import inference_model, init_model

import regproxy  # noqa: F401 registers the RegionProxy modules
from regproxy.datasets import CheckedLoadImageFromFile
from regproxy.engine import (CheckpointError, load_segmentor_checkpoint,
                             trusted_checkpoints)
from regproxy.utils import DTYPES, add_trust_checkpoint_arg, fail
OUTLINE_COLOR = (255, 255, 0)  # RGB yellow: visible on most photos


def palette_for(model: torch.nn.Module) -> np.ndarray:
    """(K, 3) uint8 RGB colours: the dataset's palette, or fixed random
    colours where the checkpoint carries none (or too few)."""
    num_classes = model.decode_head.num_classes
    palette = model.dataset_meta.get('palette')
    if palette is None or len(palette) < num_classes:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (num_classes, 3), dtype=np.uint8)
    return np.asarray(palette[:num_classes], dtype=np.uint8)


def blend(image: np.ndarray, colors: np.ndarray,
          opacity: float) -> np.ndarray:
    """Mix two (H, W, 3) uint8 pictures, ``opacity`` of ``colors``."""
    mixed = image.astype(np.float32) * (1 - opacity) + colors * opacity
    return mixed.round().astype(np.uint8)


def head_internals(
    model: torch.nn.Module, image: np.ndarray
) -> Tuple[torch.Tensor, torch.Tensor, Tuple[int, int]]:
    """One whole-image pass (``inference_model`` in test mode ``whole``),
    the head's internals read through forward hooks.

    Args:
        model (torch.nn.Module): the segmentor.
        image (np.ndarray): (H, W, 3) uint8 BGR image, as loaded.

    Returns:
        tuple: ``affinity`` (9, rh, rw, h, w), ``region_logits`` (h, w, K),
        both float32, and the (H, W) size of the resized image that the
        backbone saw.
    """
    head = model.decode_head
    captured: Dict[str, torch.Tensor] = {}
    handles = [
        head.affinity_head.register_forward_pre_hook(
            lambda module, args: captured.update(x_mid=args[0])),
        head.mlp.register_forward_hook(
            lambda module, args, out: captured.update(region_logits=out)),
    ]
    # one pass over the whole image, not one per slide window
    test_cfg, model.test_cfg = model.test_cfg, ConfigDict(mode='whole')
    try:
        with torch.no_grad():
            result = inference_model(model, image)
            affinity = head.affinity(captured['x_mid'])
    finally:
        model.test_cfg = test_cfg
        for handle in handles:
            handle.remove()
    return (affinity[0].float(), captured['region_logits'][0].float(),
            result.img_shape)


def strongest_region(affinity: torch.Tensor) -> torch.Tensor:
    """(9, rh, rw, h, w) affinities -> (h*rh, w*rw) absolute index
    ``row * w + col`` of each sub-pixel's strongest neighbouring token."""
    _, rh, rw, h, w = affinity.shape
    neighbour = affinity.argmax(dim=0)  # (rh, rw, h, w)
    # Neighbours are row-major over the 3x3 window centred on the token.
    rows = torch.arange(h).view(1, 1, h, 1) + neighbour // 3 - 1
    cols = torch.arange(w).view(1, 1, 1, w) + neighbour % 3 - 1
    token = rows * w + cols
    return token.permute(2, 0, 3, 1).reshape(h * rh, w * rw)


def to_image_grid(cells: torch.Tensor, cell_size: Tuple[int, int],
                  resized: Tuple[int, int],
                  image: Tuple[int, int]) -> np.ndarray:
    """Spread a map of (cell_h, cell_w)-pixel cells over the resized image
    (the backbone padded it at the bottom/right to whole tokens, so the cells
    start at its top-left corner), cut the padding off and bring the map to
    the original ``image`` (H, W) size."""
    grid = cells.numpy().astype(np.int32)
    grid = grid.repeat(cell_size[0], axis=0).repeat(cell_size[1], axis=1)
    grid = grid[:resized[0], :resized[1]]
    return cv2.resize(
        grid, (image[1], image[0]), interpolation=cv2.INTER_NEAREST)


def outline(labels: np.ndarray, thickness: int) -> np.ndarray:
    """(H, W) bool mask of the borders between different labels."""
    edges = np.zeros(labels.shape, dtype=np.uint8)
    edges[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edges[:-1, :] |= labels[:-1, :] != labels[1:, :]
    if thickness > 1:
        edges = cv2.dilate(edges, np.ones((thickness, thickness), np.uint8))
    return edges.astype(bool)


def run_demo(args: argparse.Namespace) -> List[str]:
    """Write the three pictures of ``args.image`` (the command line's
    settings); returns their paths."""
    # The loader of train.py and test.py: a cut or undecodable file stops
    # with its name (cv2 fills a cut JPEG with grey), the EXIF orientation
    # tag is ignored as in training.
    image_bgr = CheckedLoadImageFromFile()(dict(img_path=args.image))['img']
    model = init_model(args.config, device=args.device,
                       cfg_options=args.cfg_options)
    # Read safely, with errors that name the file and mismatched keys.
    meta = load_segmentor_checkpoint(model, args.checkpoint).get('meta', {})
    model.dataset_meta = meta.get('dataset_meta') or {}
    if not model.dataset_meta and 'CLASSES' in meta:  # mmseg 0.x checkpoint
        model.dataset_meta = dict(
            classes=meta['CLASSES'], palette=meta.get('PALETTE'))
    with torch.autocast(
            torch.device(args.device).type,
            dtype=DTYPES[args.dtype],
            enabled=args.dtype != 'float32'):
        result = inference_model(model, image_bgr)
        affinity, region_logits, resized = head_internals(model, image_bgr)

    image = mmcv.bgr2rgb(image_bgr)
    size = image.shape[:2]
    palette = palette_for(model)
    pred = result.pred_sem_seg.data[0].cpu().numpy()
    seg = blend(image, palette[pred], args.opacity)

    patch = model.backbone.patch_size
    rh, rw = model.decode_head.region_res
    regions = to_image_grid(
        strongest_region(affinity.cpu()), (patch // rh, patch // rw),
        resized, size)
    thickness = max(1, round(min(size) / 300))
    region_img = image.copy()
    region_img[outline(regions, thickness)] = OUTLINE_COLOR

    token_classes = to_image_grid(
        region_logits.argmax(dim=-1).cpu(), (patch, patch), resized, size)
    tokens = blend(image, palette[token_classes], max(args.opacity, 0.6))
    tokens[outline(token_classes, thickness)] = 255  # block borders in white

    stem = osp.splitext(osp.basename(args.image))[0]
    paths = []
    for suffix, picture in (('seg', seg), ('regions', region_img),
                            ('tokens', tokens)):
        path = osp.join(args.out, f'{stem}_{suffix}.png')
        mmcv.imwrite(mmcv.rgb2bgr(picture), path, auto_mkdir=True)
        paths.append(path)
    return paths


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='segmentation overlay, region proxies and token classes')
    parser.add_argument('image')
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--out', required=True, help='output directory')
    parser.add_argument(
        '--device', default='cuda:0' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--dtype', choices=list(DTYPES), default='float32',
                        help='autocast precision of the forward passes '
                        '(float16 needs a GPU)')
    parser.add_argument('--opacity', type=float, default=0.5,
                        help='weight of the class colours, in (0, 1]')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='config overrides, e.g. test_pipeline.1.scale="(512,256)"')
    add_trust_checkpoint_arg(parser)
    args = parser.parse_args(argv)
    if args.dtype == 'float16' and not args.device.startswith('cuda'):
        parser.error('--dtype float16 needs a GPU; on the CPU use bfloat16')
    if not 0 < args.opacity <= 1:
        parser.error(f'--opacity must be in (0, 1], got {args.opacity}')
    return args


def main(argv: Optional[Sequence[str]] = None) -> List[str]:
    args = parse_args(argv)
    try:
        with trusted_checkpoints(args.trust_checkpoint):
            paths = run_demo(args)
    except (CheckpointError, OSError) as error:  # OSError: the image
        fail(str(error))
    print('\n'.join(paths))
    return paths


if __name__ == '__main__':
    main()
