"""Export RegionProxy whole-image inference to ONNX, checked by onnxruntime.

    python tools/deployment/pytorch2onnx.py CONFIG [CHECKPOINT] --out FILE.onnx
        [--shape H W] [--dynamic]

The graph (opset 18) maps normalised ``img`` (B, 3, H, W) to the ``logits``
(B, K, H, W) of ``encode_decode``; onnxruntime's must stay within RTOL of
PyTorch's, relative to the largest logit. Every backbone of the configs
exports, timm's included. See docs/speed.md#onnx-export.
"""
import argparse
from typing import Optional, Sequence, Tuple

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn
from mmseg.apis import init_model

from regproxy.engine import (CheckpointError, load_segmentor_checkpoint,
                             trusted_checkpoints)
from regproxy.models.backbones import TimmRegionProxyViT
from regproxy.utils import (add_shape_arg, add_trust_checkpoint_arg,
                            config_errors, fail, load_config)

RTOL = 1e-4
OPSET = 18  # torch.export's exporter fails to convert its graph to 17


class WholeImageSegmentor(nn.Module):
    """(B, 3, H, W) normalised images -> (B, K, H, W) logits of one
    whole-image pass (``encode_decode``) of a segmentor."""

    def __init__(self, segmentor: nn.Module):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        # a torch.Size image shape: the logits are resized to it as traced
        return self.segmentor.encode_decode(img,
                                            [dict(img_shape=img.shape[2:])])


def export(model: nn.Module, out: str, shape: Tuple[int, int],
           dynamic: bool) -> None:
    """Export ``model`` at ``shape`` (H, W) into ``out``: timm backbones
    with torch's ``torch.export``-based exporter (the TorchScript tracer
    cannot export their position embeddings), ours with the tracer (which
    takes seconds, where torch.export did not finish in 10 minutes on the
    R26 hybrid stem at free sizes)."""
    traced = not isinstance(model.backbone, TimmRegionProxyViT)
    free = {}  # the exporter's arguments that free batch, height and width
    if dynamic and traced:
        axes = {0: 'batch', 2: 'height', 3: 'width'}
        free = dict(dynamic_axes=dict(img=axes, logits=axes))
    elif dynamic:
        dim = torch.export.Dim.DYNAMIC
        free = dict(dynamic_shapes=dict(img={0: dim, 2: dim, 3: dim}))
    head = model.decode_head
    # The tracer loses the in-place writes of the head's default combination
    # (the graph returns zeros); its unfold form computes the same logits.
    head.use_unfold, configured = head.use_unfold or traced, head.use_unfold
    # eval(): the exporters leave every module in the wrapper's mode. A
    # free batch is exported at 2: torch.export keeps sizes of 1 fixed.
    wrapper = WholeImageSegmentor(model).eval()
    try:
        with torch.no_grad():
            torch.onnx.export(
                wrapper, (torch.randn(2 if dynamic else 1, 3, *shape), ), out,
                dynamo=not traced, opset_version=OPSET, verbose=False,
                input_names=['img'], output_names=['logits'], **free)
    finally:
        head.use_unfold = configured


def verify(model: nn.Module, out: str,
           shapes: Sequence[Tuple[int, int, int]]) -> float:
    """Largest |onnxruntime - PyTorch| / max |PyTorch logit| over the
    (B, H, W) ``shapes`` (NaN where an output holds one), PyTorch with the
    head in its configured form; prints one line per shape."""
    session = ort.InferenceSession(out, providers=['CPUExecutionProvider'])
    generator = torch.Generator().manual_seed(0)
    relatives = []
    for batch, h, w in shapes:
        img = torch.randn(batch, 3, h, w, generator=generator)
        with torch.no_grad():
            expected = WholeImageSegmentor(model)(img).numpy()
        diff = np.abs(session.run(None, {'img': img.numpy()})[0] - expected)
        relatives.append(diff.max() / max(np.abs(expected).max(), 1e-12))
        print(f'input {batch}x3x{h}x{w}: max |onnxruntime - pytorch| '
              f'{diff.max():.3g}, relative to max |logit| {relatives[-1]:.3g}')
    return float(np.max(relatives))  # NaN if any output had a NaN


def main(argv: Optional[Sequence[str]] = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint', nargs='?')
    parser.add_argument('--out', required=True, help='the .onnx file')
    add_shape_arg(parser)
    parser.add_argument('--dynamic', action='store_true',
                        help='free batch, height and width')
    add_trust_checkpoint_arg(parser)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
        with config_errors(cfg, 'the model'):
            model = init_model(cfg, device='cpu')
        if args.checkpoint:
            with trusted_checkpoints(args.trust_checkpoint):
                load_segmentor_checkpoint(model, args.checkpoint)
    except CheckpointError as error:
        fail(str(error))
    h, w = args.shape or cfg.get('crop_size', (512, 512))
    shapes = [(1, h, w)]  # (B, H, W) to check on; exported at the first
    if args.dynamic:
        # The backbone skips resampling its position embedding at the
        # training grid; tracing one patch larger keeps the resampling in
        # the graph. Also checked: batch 2 at an odd size that needs
        # padding to whole tokens.
        patch = model.backbone.patch_size
        shapes = [(1, h + patch, w + patch), (1, h, w),
                  (2, h + patch // 2 + 1, w - patch // 2 + 3)]
    try:
        export(model, args.out, shapes[0][1:], args.dynamic)
    except torch.onnx.OnnxExporterError as error:  # its first line says why
        fail(f'{args.config}: torch.onnx.export failed: '
             f'{type(error).__name__}: {str(error).splitlines()[0]}')
    try:
        worst = verify(model, args.out, shapes)
    except Exception as error:  # onnxruntime's errors share no other base
        fail(f'{args.config}: onnxruntime cannot run {args.out}: '
             f'{type(error).__name__}: {error}')
    if not worst <= RTOL:  # NaN fails too
        fail(f'onnxruntime disagrees with PyTorch: relative difference '
             f'{worst:.3g} > {RTOL:g}')
    print(f'wrote {args.out} ({"dynamic" if args.dynamic else "static"} '
          f'shape): relative difference {worst:.3g} <= {RTOL:g}')
    return worst


if __name__ == '__main__':
    main()
