"""Argument and input checks shared by the RegionProxy backbones."""
from typing import Sequence, Tuple, Union

import torch
from mmengine.utils import to_2tuple


def check_frozen_stages(frozen_stages: int, num_layers: int) -> None:
    """Refuse a ``frozen_stages`` that names no prefix of the backbone.

    The meaning is mmpretrain's for ViTs: -1 freezes nothing, 0 the patch
    and position embeddings (and the prefix tokens), N also the first N
    layers, ``num_layers`` the whole backbone.

    Raises:
        ValueError: not an int from -1 to ``num_layers``.
    """
    if (isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int)
            or not -1 <= frozen_stages <= num_layers):
        raise ValueError(
            f'frozen_stages={frozen_stages!r} is out of range: expected an '
            f'int from -1 (nothing frozen) to {num_layers} (the whole '
            f'backbone, num_layers={num_layers}); 0 freezes the embeddings, '
            'N also the first N layers')


def checked_img_size(
        img_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    """``img_size`` as ``(H, W)`` of positive ints.

    Raises:
        ValueError: anything else (``(224, )``, three sides, a float).
    """
    size = to_2tuple(img_size)
    if (len(size) != 2 or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 1
            for s in size)):
        raise ValueError(f'img_size={img_size!r}: expected a positive int '
                         'or a pair (H, W) of them')
    return size


def check_pretrained(pretrained) -> None:
    """Refuse a ``pretrained`` that is not a file name or URL."""
    if pretrained is not None and not isinstance(pretrained, str):
        raise ValueError(f'pretrained={pretrained!r}: expected None or the '
                         'path or URL of a weights file')


def check_images(x: torch.Tensor, channels: int) -> None:
    """Refuse an input that is not a (B, channels, H, W) batch."""
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(
            f'input of shape {tuple(x.shape)}: expected a batch of images '
            f'(B, {channels}, H, W)')
