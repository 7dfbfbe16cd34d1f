import logging
import pickle
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch
import torch.nn as nn
from mmengine.logging import print_log

from ..models.utils.checkpoint_filter import is_timm_vit, unwrap_state_dict

CONVERTER = 'tools/model_converters/vit2regproxy.py'


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read or does not fit the model."""


def read_checkpoint(filename: Union[str, Path],
                    map_location: str = 'cpu') -> dict:
    """``torch.load`` with errors that name the file and the cause."""
    path = Path(filename)
    if not path.is_file():
        raise CheckpointError(f'checkpoint {path} does not exist')
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile,
            ValueError) as error:
        raise CheckpointError(
            f'cannot read checkpoint {path} ({path.stat().st_size} bytes): '
            f'{type(error).__name__}: {error}. The file is truncated or '
            'corrupt; use an earlier checkpoint or download it again') from None


def _describe(keys: List[str], shapes: Dict[str, tuple], limit: int = 20):
    listed = [f'{k} {tuple(shapes[k])}' for k in keys[:limit]]
    more = f' ... and {len(keys) - limit} more' if len(keys) > limit else ''
    return ', '.join(listed) + more


def load_segmentor_checkpoint(model: nn.Module,
                              filename: Union[str, Path],
                              map_location: str = 'cpu',
                              strict: bool = True,
                              logger: Optional[str] = 'current') -> dict:
    """Load a segmentor checkpoint (ours or a released mmseg 0.x one).

    Raises ``CheckpointError`` for an unreadable file, for ImageNet ViT
    weights (pointing to the converter), and, when ``strict``, for keys that
    are missing, unexpected or of another shape, listing them with shapes.
    Without ``strict`` the mismatches are logged and the rest is loaded.

    Returns:
        dict: the whole checkpoint (``meta``, optimizer, ... for resuming).
    """
    checkpoint = read_checkpoint(filename, map_location)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f'checkpoint {filename} holds a {type(checkpoint).__name__}, '
            'expected a dict with a state_dict')
    weights = checkpoint.get('state_dict', checkpoint)
    weights = {
        (k[len('module.'):] if k.startswith('module.') else k): v
        for k, v in weights.items()
    }
    if is_timm_vit(unwrap_state_dict(checkpoint)) and not any(
            k.startswith('decode_head.') for k in weights):
        raise CheckpointError(
            f'{filename} holds ImageNet ViT weights (timm/DeiT names), not a '
            f'segmentor checkpoint: set it as model.backbone.pretrained, or '
            f'convert it with python {CONVERTER} {filename} OUT --config '
            'CONFIG')

    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(weights)
                         if own[k].shape != weights[k].shape)
    problems = []
    if missing:
        problems.append('missing in the checkpoint: ' + _describe(
            missing, {k: v.shape
                      for k, v in own.items()}))
    if unexpected:
        problems.append('not in the model: ' + _describe(
            unexpected, {k: v.shape
                         for k, v in weights.items()}))
    if wrong_shape:
        problems.append('shape differs (checkpoint vs model): ' + ', '.join(
            f'{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}'
            for k in wrong_shape[:20]))
    if problems:
        message = (f'checkpoint {filename} does not fit the model; ' +
                   '; '.join(problems))
        if strict:
            raise CheckpointError(
                message + '. To load the matching part only, set '
                'load_strict=False (--cfg-options load_strict=False)')
        print_log(message, logger=logger, level=logging.WARNING)
    for key in wrong_shape:
        weights.pop(key)
    model.load_state_dict(weights, strict=False)
    return checkpoint
