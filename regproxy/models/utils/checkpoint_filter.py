"""Convert timm, DeiT and mmseg ImageNet ViT weights to RegionProxy names."""
import logging
import math
import re
from typing import Dict, Mapping

import torch
import torch.nn as nn
from mmengine.logging import print_log
from timm.layers import resample_abs_pos_embed

from .safe_checkpoint_loader import revise_state_dict

__all__ = ['checkpoint_filter_fn', 'unwrap_state_dict', 'part_under',
           'is_timm_vit']

# (pattern, replacement) applied in order to every timm/DeiT key.
_TIMM_TO_MMSEG = [
    (r'^blocks\.(\d+)\.', r'layers.\1.'),
    # only the transformer layers: the ResNetV2 stem keeps its norm1/norm2
    (r'^(layers\.\d+)\.norm1\.', r'\1.ln1.'),
    (r'^(layers\.\d+)\.norm2\.', r'\1.ln2.'),
    (r'\.attn\.qkv\.(weight|bias)$', r'.attn.attn.in_proj_\1'),
    (r'\.attn\.proj\.', '.attn.attn.out_proj.'),
    (r'\.mlp\.fc1\.', '.ffn.layers.0.0.'),
    (r'\.mlp\.fc2\.', '.ffn.layers.1.'),
    (r'^norm\.', 'ln1.'),
]
# ImageNet classifier and pooling parts that a segmentation backbone drops.
_CLASSIFIER = re.compile(r'^(head|head_dist|pre_logits|fc_norm)\b')


def unwrap_state_dict(checkpoint: Mapping) -> Dict[str, torch.Tensor]:
    """Return the weights of an mmengine (``state_dict``), DeiT (``model``)
    or plain timm checkpoint, without ``module.``/``backbone.`` prefixes."""
    for key in ('state_dict', 'model'):
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            checkpoint = checkpoint[key]
            break
    return part_under(revise_state_dict(checkpoint), 'backbone.')


def part_under(state_dict: Mapping, prefix: str) -> Dict[str, torch.Tensor]:
    """The entries under ``prefix``, without it, where some key has it (a
    submodule's weights in its parent's); otherwise ``state_dict`` itself.
    """
    if not any(k.startswith(prefix) for k in state_dict):
        return state_dict
    return {k[len(prefix):]: v for k, v in state_dict.items()
            if k.startswith(prefix)}


def is_timm_vit(state_dict: Mapping) -> bool:
    """timm and DeiT name their layers ``blocks.N``; mmseg ``layers.N``."""
    return any(k.startswith('blocks.') for k in state_dict)


def _rename_timm(state_dict: Mapping, hybrid: bool) -> Dict[str, torch.Tensor]:
    converted = {}
    for key, value in state_dict.items():
        if _CLASSIFIER.match(key):
            continue
        for pattern, repl in _TIMM_TO_MMSEG:
            key = re.sub(pattern, repl, key)
        if not hybrid:
            key = re.sub(r'^patch_embed\.proj\.', 'patch_embed.projection.',
                         key)
        converted[key] = value
    return converted


def checkpoint_filter_fn(checkpoint: Mapping,
                         model: nn.Module) -> Dict[str, torch.Tensor]:
    """Turn an ImageNet ViT checkpoint into a state dict for ``model``.

    Accepts timm ``state_dict`` files, DeiT's ``{'model': ...}`` files and
    mmseg-named files (e.g. from mmseg's ``vit2mmseg.py``, or an mmseg
    segmentor checkpoint, whose ``backbone.`` part is taken). timm names are
    renamed to mmseg's and the classifier is dropped. Our patch projection
    has no bias (as released): a bias in the file is added to the grid part
    of ``pos_embed``, which gives exactly the same tokens. ``pos_embed`` is
    resampled to the model's grid (timm's resampler).

    Args:
        checkpoint (Mapping): the loaded file.
        model (RegionProxyViT): the backbone (may live on the meta device);
            its ``grid_size``, ``num_prefix_tokens``, ``interpolate_mode`` and
            patch embedding decide the conversion.

    Returns:
        dict: the backbone's state dict.
    """
    hybrid = not hasattr(model.patch_embed, 'projection')
    state_dict = unwrap_state_dict(checkpoint)
    if is_timm_vit(state_dict):
        state_dict = _rename_timm(state_dict, hybrid)
    bias = state_dict.pop('patch_embed.projection.bias', None)
    ckpt_prefix = 1 + ('dist_token' in state_dict)
    if bias is not None and 'pos_embed' in state_dict:
        pos_embed = state_dict['pos_embed'].clone()
        pos_embed[:, ckpt_prefix:] += bias
        state_dict['pos_embed'] = pos_embed

    if 'pos_embed' not in state_dict:
        return state_dict
    pos_embed = state_dict['pos_embed']
    if ckpt_prefix != model.num_prefix_tokens:
        print_log(
            f'pos_embed of the checkpoint has {ckpt_prefix} prefix token(s), '
            f'the model {model.num_prefix_tokens}: pos_embed is not loaded',
            logger='current', level=logging.WARNING)
        del state_dict['pos_embed']
        return state_dict
    num_grid = pos_embed.shape[1] - ckpt_prefix
    side = math.isqrt(num_grid)
    if side * side != num_grid:
        raise ValueError(f'pos_embed has {num_grid} grid entries, which is '
                         'not a square grid; cannot infer its size')
    if (side, side) != tuple(model.grid_size):
        print_log(
            f'pos_embed resampled from a {side}x{side} to a '
            f'{model.grid_size[0]}x{model.grid_size[1]} grid '
            f'({model.interpolate_mode})', logger='current')
        # no antialiasing: the published models were trained and evaluated
        # with plain interpolation
        state_dict['pos_embed'] = resample_abs_pos_embed(
            pos_embed, list(model.grid_size), [side, side], ckpt_prefix,
            model.interpolate_mode, antialias=False)
    return state_dict
