"""Loading segmentor checkpoints into models and writing checkpoint files
(docs/checkpoints.md)."""
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple, Union

import torch.nn as nn
from mmengine.fileio import get_file_backend
from mmengine.runner.checkpoint import load_state_dict, save_checkpoint
from safetensors.torch import save as safetensors_bytes

from ..models.utils.checkpoint_filter import is_timm_vit, unwrap_state_dict
from ..models.utils.safe_checkpoint_loader import (DDP_PREFIX,
                                                   CheckpointError,
                                                   check_state_dict_fits,
                                                   load_checkpoint_file,
                                                   revise_state_dict)
from .unwrap_model import unwrap_model

__all__ = [
    'save_checkpoint_file', 'load_weights', 'load_segmentor_checkpoint'
]

CONVERTER = 'tools/model_converters/vit2regproxy.py'
# The registered backend of atomic_local_backend.py.
ATOMIC = dict(backend='atomic_local')
STRICT_REMEDY = ('To load the matching part only, set load_strict=False '
                 '(--cfg-options load_strict=False)')


def save_checkpoint_file(obj: dict, filename: Union[str, Path]) -> None:
    """Write a checkpoint through the ``atomic_local`` backend, never
    leaving a partial file under ``filename``.

    A name ending in ``.safetensors`` gets a safetensors file of
    ``obj['state_dict']`` (or of ``obj`` itself when it has none: the
    format holds tensors only); any other name mmengine's ``torch.save``
    file of ``obj``.
    """
    if not str(filename).endswith('.safetensors'):
        save_checkpoint(obj, str(filename), backend_args=ATOMIC)
        return
    # safetensors refuses tensors that share memory: each gets its own
    data = safetensors_bytes({
        k: v.detach().cpu().clone().contiguous()
        for k, v in obj.get('state_dict', obj).items()
    })
    get_file_backend(str(filename), backend_args=ATOMIC).put(data, filename)


def load_weights(model: nn.Module,
                 checkpoint: dict,
                 source: str,
                 strict: bool = True,
                 revise_keys: Sequence[Tuple[str, str]] = DDP_PREFIX,
                 logger: Optional[str] = 'current') -> None:
    """Load the weights of a read checkpoint into ``model`` through
    mmengine's ``load_state_dict``, after the ``revise_keys`` rewrites.

    Args:
        model (nn.Module): the model, wrappers followed (:func:`unwrap_model`).
        checkpoint (dict): as read by :func:`load_checkpoint_file`.
        source (str): the file, for the messages.
        strict (bool): refuse a checkpoint that does not fit, naming the keys
            and shapes; else load the matching tensors and let mmengine log
            the rest. Default: True.
        revise_keys: mmengine's ``(pattern, replacement)`` key rewrites.
            Default: DDP's ``module.`` removed.
        logger: where mmengine's mismatch warning goes.

    Raises:
        CheckpointError: not a dict, ImageNet ViT weights (timm/DeiT names:
            the message points to the converter), or (with ``strict``) keys
            missing, unexpected or of another shape.
    """
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f'checkpoint {source} holds a {type(checkpoint).__name__}, '
            'expected a dict with a state_dict')
    weights = checkpoint.get('state_dict', checkpoint)
    if is_timm_vit(unwrap_state_dict(checkpoint)) and not any(
            k.startswith('decode_head.') for k in weights):
        raise CheckpointError(
            f'{source} holds ImageNet ViT weights (timm/DeiT names), not a '
            f'segmentor checkpoint: set it as model.backbone.pretrained, or '
            f'convert it with python {CONVERTER} {source} OUT --config CONFIG')
    weights = revise_state_dict(weights, revise_keys)
    model = unwrap_model(model)
    if strict:
        check_state_dict_fits(model, weights, source, STRICT_REMEDY)
    load_state_dict(model, weights, strict=False, logger=logger)


def load_segmentor_checkpoint(model: nn.Module,
                              filename: Union[str, Path],
                              map_location: Any = 'cpu',
                              strict: bool = True,
                              logger: Optional[str] = 'current') -> dict:
    """Read a segmentor checkpoint (ours or a released mmseg 0.x one; any
    scheme of :func:`load_checkpoint_file`) safely and load it into
    ``model`` (see :func:`load_weights`).

    Returns:
        dict: the whole checkpoint (``meta``, ...).
    """
    checkpoint = load_checkpoint_file(filename, map_location)
    load_weights(model, checkpoint, str(filename), strict, logger=logger)
    return checkpoint
