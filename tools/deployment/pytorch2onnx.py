"""Export RegionProxy whole-image inference to ONNX and check it with
onnxruntime.

    python tools/deployment/pytorch2onnx.py CONFIG [CHECKPOINT] --out FILE.onnx
        [--shape H W] [--dynamic] [--opset 17]

The graph takes ``img`` (B, 3, H, W) float32, normalised as the config's data
preprocessor does (RGB, mean/std), and returns ``logits`` (B, K, H, W):
backbone, ``ProxyHead`` and the bilinear resize to the input size, as
``encode_decode`` computes them. ``--dynamic`` leaves B, H and W free.

The exporter is TorchScript's (``dynamo=False``): torch 2.12's default dynamo
exporter needs the onnxscript package, which the pinned stack does not
install. Two things its tracer would get wrong are avoided:

- ``ProxyHead`` by default accumulates into a strided view of its output in
  place, and the traced graph loses those writes (it returns zeros); the head
  is therefore exported in its unfold form, which computes the same logits
  without in-place writes;
- ``RegionProxyViT`` skips resampling the position embedding when the token
  grid is the training grid; a trace at that grid would bake the skip into a
  dynamic graph, so dynamic graphs are traced one patch larger (bicubic
  resampling to the same grid is exact, so the training size still works).

The exported file is then run by onnxruntime on random inputs (for a dynamic
graph also at another batch size and an odd image size) and compared with
PyTorch: the largest difference relative to the largest logit must stay
within ``--rtol`` (1e-4).
"""
import argparse
from typing import List, Optional, Sequence, Tuple

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
from mmengine.config import Config
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

import regproxy  # noqa: F401 registers the RegionProxy modules
from regproxy.engine import (CheckpointError, load_segmentor_checkpoint,
                             trusted_checkpoints)
from regproxy.utils import (add_shape_arg, add_trust_checkpoint_arg, fail,
                            standalone_model_cfg)


class WholeImageSegmentor(nn.Module):
    """(B, 3, H, W) normalised images -> (B, K, H, W) logits of one
    whole-image pass (``encode_decode``) of a RegionProxy segmentor."""

    def __init__(self, segmentor: nn.Module):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        # a torch.Size image shape: the logits are resized to it as traced
        return self.segmentor.encode_decode(img,
                                            [dict(img_shape=img.shape[2:])])


def trace_shape(model: nn.Module, shape: Tuple[int, int],
                dynamic: bool) -> Tuple[int, int]:
    """Input size to trace at: ``shape``, or for a dynamic graph one whose
    token grid differs from the training grid."""
    backbone = model.backbone
    patch = backbone.patch_size
    grid = (-(-shape[0] // patch), -(-shape[1] // patch))
    if dynamic and grid == tuple(backbone.grid_size):
        return shape[0] + patch, shape[1] + patch
    return shape


def check_shapes(model: nn.Module, shape: Tuple[int, int],
                 dynamic: bool) -> List[Tuple[int, int, int]]:
    """(B, H, W) inputs to compare on: the export size, and for a dynamic
    graph also batch 2 at an odd size that needs padding to whole tokens."""
    shapes = [(1, *shape)]
    if dynamic:
        patch = model.backbone.patch_size
        shapes.append((2, shape[0] + patch // 2 + 1,
                       shape[1] - patch // 2 + 3))
        traced = trace_shape(model, shape, dynamic)
        if traced != shape:
            shapes.append((1, *traced))
    return shapes


def export(model: nn.Module, out: str, shape: Tuple[int, int], dynamic: bool,
           opset: int):
    """Trace ``model`` into ``out``, its head in the unfold form (module
    docstring); the head's configured form is restored afterwards."""
    wrapper = WholeImageSegmentor(model).eval()
    dummy = torch.randn(1, 3, *trace_shape(model, shape, dynamic))
    axes = {0: 'batch', 2: 'height', 3: 'width'}
    head = model.decode_head
    configured = head.use_unfold
    head.use_unfold = True
    try:
        with torch.no_grad():
            torch.onnx.export(
                wrapper, (dummy, ),
                out,
                dynamo=False,
                opset_version=opset,
                input_names=['img'],
                output_names=['logits'],
                dynamic_axes=dict(img=axes, logits=axes) if dynamic else None)
    finally:
        head.use_unfold = configured
    onnx.checker.check_model(onnx.load(out))


def verify(model: nn.Module, out: str,
           shapes: Sequence[Tuple[int, int, int]]) -> float:
    """Largest |onnxruntime - PyTorch| / max |PyTorch logit| over
    ``shapes`` (NaN where an output holds one), PyTorch with the head in its
    configured form; prints one line per shape."""
    wrapper = WholeImageSegmentor(model).eval()
    session = ort.InferenceSession(out, providers=['CPUExecutionProvider'])
    generator = torch.Generator().manual_seed(0)
    relatives = []
    for batch, h, w in shapes:
        img = torch.randn(batch, 3, h, w, generator=generator)
        with torch.no_grad():
            expected = wrapper(img).numpy()
        actual = session.run(None, {'img': img.numpy()})[0]
        if actual.shape != expected.shape:
            raise RuntimeError(f'onnxruntime gave {actual.shape}, PyTorch '
                               f'{expected.shape} for input {img.shape}')
        diff = float(np.abs(actual - expected).max())
        relatives.append(diff / max(float(np.abs(expected).max()), 1e-12))
        print(f'input {batch}x3x{h}x{w}: max |onnxruntime - pytorch| '
              f'{diff:.3g}, relative to max |logit| {relatives[-1]:.3g}')
    return float(np.max(relatives))  # NaN if any output had a NaN


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='export whole-image inference to ONNX and verify it')
    parser.add_argument('config')
    parser.add_argument('checkpoint', nargs='?')
    parser.add_argument('--out', required=True, help='the .onnx file')
    add_shape_arg(parser)
    parser.add_argument('--dynamic', action='store_true',
                        help='free batch, height and width')
    parser.add_argument('--opset', type=int, default=17)
    parser.add_argument(
        '--rtol', type=float, default=1e-4,
        help='largest allowed difference relative to the largest logit')
    add_trust_checkpoint_arg(parser)
    args = parser.parse_args(argv)
    if args.opset < 17:
        parser.error('opset 17 or newer is needed (LayerNormalization)')
    return args


def main(argv: Optional[Sequence[str]] = None) -> float:
    args = parse_args(argv)
    register_all_modules()
    cfg = Config.fromfile(args.config)
    model = MODELS.build(standalone_model_cfg(cfg.model)).eval()
    if args.checkpoint:
        try:
            with trusted_checkpoints(args.trust_checkpoint):
                load_segmentor_checkpoint(model, args.checkpoint)
        except CheckpointError as error:
            fail(str(error))
    shape = tuple(args.shape or cfg.get('crop_size', (512, 512)))
    export(model, args.out, shape, args.dynamic, args.opset)
    print(f'wrote {args.out} (opset {args.opset}, '
          f'{"dynamic" if args.dynamic else "static"} shape)')
    worst = verify(model, args.out, check_shapes(model, shape, args.dynamic))
    if not worst <= args.rtol:  # NaN fails too
        fail(f'onnxruntime disagrees with PyTorch: relative difference '
             f'{worst:.3g} > {args.rtol:g}')
    print(f'verified: relative difference {worst:.3g} <= {args.rtol:g}')
    return worst


if __name__ == '__main__':
    main()
