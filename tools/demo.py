"""Segment one image with a RegionProxy model and picture its region proxies.

    python tools/demo.py IMAGE CONFIG CHECKPOINT --out DIR [--device cpu]
        [--dtype float32|bfloat16|float16] [--cfg-options ...]

Writes ``<name>_seg.png`` (the classes predicted in the config's test mode),
``<name>_regions.png`` (each pixel joined to its strongest neighbouring token)
and ``<name>_tokens.png`` (each token's class) into DIR; see the README.
"""
import argparse
import os.path as osp
from typing import List, Optional, Sequence, Tuple

import cv2
import mmcv
import numpy as np
import torch
from mmengine.config import ConfigDict, DictAction
from mmengine.structures import PixelData
from mmseg.apis import inference_model, init_model
from mmseg.structures import SegDataSample
from mmseg.visualization import SegLocalVisualizer

from regproxy.datasets import CheckedLoadImageFromFile
from regproxy.engine import (CheckpointError, load_segmentor_checkpoint,
                             trusted_checkpoints)
from regproxy.utils import (DTYPES, add_trust_checkpoint_arg, config_errors,
                            fail, load_config)

OUTLINE_COLOR = (255, 255, 0)  # RGB yellow: visible on most photos


def token_maps(model: torch.nn.Module,
               image: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(H, W) maps of the BGR ``image`` from one whole-image pass, read by
    forward hooks (left on ``model``): each pixel's strongest neighbouring
    token (the argmax of ``ProxyHead.affinity``) and its token's class (the
    argmax of the token's region logits)."""
    head = model.decode_head
    captured = {}
    head.affinity_head.register_forward_pre_hook(
        lambda module, args: captured.update(x_mid=args[0]))
    head.mlp.register_forward_hook(
        lambda module, args, out: captured.update(region_logits=out))
    model.test_cfg = ConfigDict(mode='whole', return_logits=False)
    resized, size = inference_model(model, image).img_shape, image.shape[:2]
    with torch.no_grad():
        affinity = head.affinity(captured['x_mid'])[0].cpu()
    regions = strongest_region(affinity)
    patch, (rh, rw) = model.backbone.patch_size, head.region_res
    tokens = captured['region_logits'][0].argmax(dim=-1)
    return (to_image_grid(regions, patch, (rh, rw), resized, size),
            to_image_grid(tokens, patch, (1, 1), resized, size))


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


def to_image_grid(cells: torch.Tensor, patch: int,
                  per_patch: Tuple[int, int], resized: Tuple[int, int],
                  image: Tuple[int, int]) -> np.ndarray:
    """A map of cells, ``per_patch`` (rows, cols) of them to a ``patch``
    pixels square of the ``resized`` image (which the backbone padded at the
    bottom/right), at the ``image`` (H, W) size. Integer arithmetic: a cell
    need not be a whole number of pixels wide (patch 14, 4 x 4 sub-pixels:
    3.5 pixels)."""
    rows, cols = (np.arange(side) * scaled * cells // (side * patch)
                  for side, scaled, cells in zip(image, resized, per_patch))
    return cells.cpu().numpy()[np.ix_(rows, cols)]


def outline(labels: np.ndarray, thickness: int) -> np.ndarray:
    """(H, W) bool mask of the borders between different labels."""
    kernel = np.ones((thickness + 1, thickness + 1), np.uint8)
    return cv2.morphologyEx(labels.astype(np.float32), cv2.MORPH_GRADIENT,
                            kernel) > 0


def overlay(visualizer: SegLocalVisualizer, image: np.ndarray,
            classes: np.ndarray) -> np.ndarray:
    """(H, W) classes drawn over the RGB ``image`` by mmseg's visualizer."""
    sample = SegDataSample(pred_sem_seg=PixelData(data=classes[None]))
    visualizer.add_datasample('', image, sample, draw_gt=False,
                              with_labels=False)
    return visualizer.get_image()


def run_demo(args: argparse.Namespace) -> List[str]:
    """Write the three pictures of ``args.image``; returns their paths."""
    image_bgr = CheckedLoadImageFromFile()(dict(img_path=args.image))['img']
    # Only the class map is pictured: predict it without the full logits.
    cfg = load_config(args.config, {'model.test_cfg.return_logits': False,
                                    **(args.cfg_options or {})})
    with config_errors(cfg, 'the model'):
        model = init_model(cfg, device=args.device)
    meta = load_segmentor_checkpoint(model, args.checkpoint).get('meta', {})
    # 1.x files carry dataset_meta, released 0.x ones CLASSES and PALETTE
    palette = (meta.get('dataset_meta') or {}).get('palette',
                                                   meta.get('PALETTE'))
    num_classes = model.decode_head.num_classes
    if palette is None:  # e.g. a safetensors file: fixed random colours
        palette = np.random.default_rng(0).integers(0, 256, (num_classes, 3))
    visualizer = SegLocalVisualizer(alpha=0.5)
    visualizer.dataset_meta = dict(classes=range(num_classes),
                                   palette=palette)
    with torch.autocast(torch.device(args.device).type,
                        dtype=DTYPES[args.dtype],
                        enabled=args.dtype != 'float32'):
        pred = inference_model(model, image_bgr).pred_sem_seg.data[0].cpu()
        regions, token_classes = token_maps(model, image_bgr)

    image = mmcv.bgr2rgb(image_bgr)
    thickness = max(1, round(min(image.shape[:2]) / 300))
    region_img = image.copy()
    region_img[outline(regions, thickness)] = OUTLINE_COLOR
    tokens = overlay(visualizer, image, token_classes)
    tokens[outline(token_classes, thickness)] = 255  # block borders, white
    stem = osp.join(args.out, osp.splitext(osp.basename(args.image))[0])
    paths = [f'{stem}_{name}.png' for name in ('seg', 'regions', 'tokens')]
    seg = overlay(visualizer, image, pred.numpy())
    for path, picture in zip(paths, (seg, region_img, tokens)):
        mmcv.imwrite(mmcv.rgb2bgr(picture), path, auto_mkdir=True)
    return paths


def main(argv: Optional[Sequence[str]] = None) -> List[str]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('image')
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--out', required=True, help='output directory')
    parser.add_argument(
        '--device', default='cuda:0' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--dtype', choices=list(DTYPES), default='float32',
                        help='autocast precision of the forward passes')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='config overrides, e.g. test_pipeline.1.scale="(512,256)"')
    add_trust_checkpoint_arg(parser)
    args = parser.parse_args(argv)
    try:
        with trusted_checkpoints(args.trust_checkpoint):
            paths = run_demo(args)
    except (CheckpointError, OSError) as error:  # OSError: the image
        fail(str(error))
    print('\n'.join(paths))
    return paths


if __name__ == '__main__':
    main()
