"""Inference through ``torch.compile``: for small models on GPUs.

At batch 1 a small ViT spends its time launching kernels, not running them
(ViT-Ti/16 at 512x512 ran at the FPS of ViT-S/16 on an H200, and float16
autocast was slower than float32). ``torch.compile(mode='reduce-overhead')``
fuses the kernels and replays them as CUDA graphs, one launch per pass.
"""
import torch
import torch.nn as nn

__all__ = ['COMPILE_MODE', 'CPU_COMPILE_NOTE', 'compile_inference']

COMPILE_MODE = 'reduce-overhead'  # inductor kernels replayed as CUDA graphs

# Why the option is off by default, and what it does on the CPU.
CPU_COMPILE_NOTE = (
    'torch.compile gives no gain for inference on the CPU (measured 0.79x '
    'the eager speed, after 79 s of compilation, ViT-Ti/16 512x512 on a '
    '2-core EPYC): it is meant for GPUs, where CUDA graphs remove the '
    'per-kernel launch cost at batch 1')


def compile_inference(model: nn.Module, mode: str = COMPILE_MODE) -> nn.Module:
    """Compile the segmentor's ``encode_decode`` (backbone, head and the
    resize of the logits to the input) in place.

    Weights and their names are untouched, so checkpoints load before or
    after. Compilation happens at the first call of each input shape; slide
    inference pads every window to the crop, so it compiles once. CUDA
    graphs reuse their output buffer on the next call, so the logits are
    copied out (test-time augmentation keeps several).

    Args:
        model (nn.Module): a segmentor, possibly wrapped (DDP, test-time
            augmentation: ``module`` attributes are followed).
        mode (str): ``torch.compile`` mode. Default: 'reduce-overhead'.

    Returns:
        nn.Module: the segmentor whose ``encode_decode`` was compiled.
    """
    segmentor = model
    while hasattr(segmentor, 'module'):
        segmentor = segmentor.module
    compiled = torch.compile(segmentor.encode_decode, mode=mode)

    def encode_decode(inputs, batch_img_metas):
        return compiled(inputs, batch_img_metas).clone()

    segmentor.encode_decode = encode_decode
    return segmentor
