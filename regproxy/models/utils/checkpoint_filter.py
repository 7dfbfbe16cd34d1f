"""Convert timm / DeiT ImageNet checkpoints to RegionProxy backbone names."""
import math
import re
from typing import Dict, Mapping, Sequence, Tuple

import torch
from mmengine.logging import print_log

from .pos_embed import resample_abs_pos_embed

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
    state_dict = {}
    for key, value in checkpoint.items():
        key = key[len('module.'):] if key.startswith('module.') else key
        state_dict[key] = value
    if any(k.startswith('backbone.') for k in state_dict):
        state_dict = {
            k[len('backbone.'):]: v
            for k, v in state_dict.items() if k.startswith('backbone.')
        }
    return state_dict


def is_timm_vit(state_dict: Mapping) -> bool:
    """timm and DeiT name their layers ``blocks.N``; mmseg ``layers.N``."""
    return any(k.startswith('blocks.') for k in state_dict)


def convert_vit_checkpoint(checkpoint: Mapping,
                           grid_size: Sequence[int],
                           num_prefix_tokens: int,
                           hybrid: bool,
                           interpolate_mode: str = 'bicubic'
                           ) -> Dict[str, torch.Tensor]:
    """Rename a timm/DeiT ViT checkpoint to mmseg names for our backbone.

    Drops the classifier, renames ``patch_embed.proj`` to
    ``patch_embed.projection`` for plain ViTs (hybrid stems keep timm's
    names; the plain patch bias is folded into ``pos_embed``) and resizes
    ``pos_embed`` to ``grid_size``. Checkpoints already in
    mmseg names only get the ``pos_embed`` resize.

    Args:
        checkpoint (Mapping): a timm state_dict, DeiT ``{'model': ...}`` or an
            mmseg checkpoint (``state_dict``; ``backbone.`` is stripped).
        grid_size (Sequence[int]): token grid (h, w) of the target model.
        num_prefix_tokens (int): 1 (cls) or 2 (cls + DeiT dist) in the model.
        hybrid (bool): the target uses a ResNetV2 stem.
        interpolate_mode (str): position-embedding resize mode.

    Returns:
        dict: the converted state_dict of the backbone.
    """
    state_dict = unwrap_state_dict(checkpoint)
    if is_timm_vit(state_dict):
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
        state_dict = converted
        # Our patch projection has no bias (as released); adding the bias to
        # the grid part of pos_embed gives exactly the same tokens.
        bias = state_dict.pop('patch_embed.projection.bias', None)
        if bias is not None and 'pos_embed' in state_dict:
            pos_embed = state_dict['pos_embed'].clone()
            pos_embed[:, 1 + ('dist_token' in state_dict):] += bias
            state_dict['pos_embed'] = pos_embed

    if 'pos_embed' in state_dict:
        pos_embed = state_dict['pos_embed']
        ckpt_prefix = 1 + ('dist_token' in state_dict)
        if ckpt_prefix != num_prefix_tokens:
            print_log(
                f'pos_embed of the checkpoint has {ckpt_prefix} prefix '
                f'token(s), the model {num_prefix_tokens}: pos_embed is not '
                'loaded', logger='current', level=30)
            del state_dict['pos_embed']
        else:
            old_grid = _square_grid(pos_embed.shape[1] - ckpt_prefix)
            state_dict['pos_embed'] = resample_abs_pos_embed(
                pos_embed, grid_size, old_grid, ckpt_prefix, interpolate_mode)
    return state_dict


def checkpoint_filter_fn(checkpoint: Mapping,
                         model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """``convert_vit_checkpoint`` for a built ``RegionProxyViT``."""
    return convert_vit_checkpoint(
        checkpoint,
        grid_size=model.grid_size,
        num_prefix_tokens=model.num_prefix_tokens,
        hybrid=not hasattr(model.patch_embed, 'projection'),
        interpolate_mode=model.interpolate_mode)


def _square_grid(num_tokens: int) -> Tuple[int, int]:
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f'pos_embed has {num_tokens} grid entries, which is '
                         'not a square grid; cannot infer its size')
    return side, side
