"""Plain and hybrid Vision Transformer backbones for RegionProxy.

The patch tokens of the ViT are the region proxies of
"Semantic Segmentation by Early Region Proxy" (Zhang et al., CVPR 2022,
https://arxiv.org/abs/2203.14043). Module and parameter names follow
mmsegmentation's ``VisionTransformer`` so that released checkpoints load
unchanged; the internals follow timm (fused attention, one position-embedding
resampler, one checkpoint filter).
"""
import functools
import logging
import time
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from timm.layers import DropPath, resample_abs_pos_embed, trunc_normal_

from ..utils.checkpoint_filter import checkpoint_filter_fn
from ..utils.safe_checkpoint_loader import (CheckpointError,
                                            check_state_dict_fits,
                                            load_checkpoint_file)
from .arg_checks import (check_frozen_stages, check_images,
                         check_pretrained, checked_img_size)
from .hybrid_embed import HYBRID_STEMS, HybridPatchEmbed

__all__ = ['RegionProxyViT']


# Bytes of the (B, heads, rows, N) scores of one chunk of query rows in
# explicit attention on the CPU: bounded so that glibc serves them from its
# heap; larger blocks are mapped afresh on every call, whose page faults
# took more time than the matmuls (1024-4096 tokens, 2 vCPUs).
CPU_SCORES_BYTES = 4 * 2**20


def prefers_explicit_attention(q: torch.Tensor, dropout_p: float) -> bool:
    """Whether explicit matmuls beat ``F.scaled_dot_product_attention`` for
    queries ``q``: bfloat16 inference on a CPU where
    :func:`explicit_bfloat16_attention_is_faster`."""
    return (q.device.type == 'cpu' and q.dtype == torch.bfloat16
            and dropout_p == 0 and not torch.is_grad_enabled()
            and explicit_bfloat16_attention_is_faster())


@functools.lru_cache(maxsize=None)
def explicit_bfloat16_attention_is_faster() -> bool:
    """Whether this CPU runs bfloat16 attention faster as explicit matmuls
    (:func:`explicit_attention` in chunks) than through torch 2.12's fused
    kernel: timed once per process, as ``torch.backends.cudnn.benchmark``
    times kernels, on ViT-Ti's attention (3 heads of 64 channels, 1024
    tokens; the best of 3 calls each, a fraction of a second in all). No
    instruction flag tells: with AVX512-BF16 explicit matmuls are 2.0-2.6x
    faster on an AMD EPYC of family 26, 1.2-1.6x on one of family 25 (the
    timing call itself), 1.2-1.4x slower on an Intel Xeon
    (family 6 model 207, no AMX) and 4-8x slower on one with AMX (model
    167); where bfloat16 is emulated, 3.5x slower (docs/speed.md)."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 1, 3, 1024, 64,
                          generator=generator).bfloat16()

    def fastest_call(attention) -> float:
        attention(q, k, v)  # the first call sets kernels up
        calls = []
        for _ in range(3):
            start = time.perf_counter()
            attention(q, k, v)
            calls.append(time.perf_counter() - start)
        return min(calls)

    explicit = functools.partial(explicit_attention,
                                 max_scores_bytes=CPU_SCORES_BYTES)
    with torch.no_grad():
        return fastest_call(explicit) < fastest_call(
            F.scaled_dot_product_attention)


def explicit_attention(q: torch.Tensor,
                       k: torch.Tensor,
                       v: torch.Tensor,
                       dropout_p: float = 0.,
                       max_scores_bytes: Optional[int] = None) -> torch.Tensor:
    """(B, heads, N, D) softmax attention by explicit matmuls (the reference
    form of the fused kernel), ``max_scores_bytes`` bounding the scores
    built at once (a chunk of query rows each; None: all rows)."""
    B, heads, N, _ = q.shape
    rows = N if max_scores_bytes is None else max(
        1, max_scores_bytes // (B * heads * k.shape[2] * q.element_size()))
    # Scaled and made contiguous once, not per chunk: matmul copies strided
    # operands (q, k, v are views of the qkv projection) on every call,
    # which made bfloat16 attention at 4096 tokens 1.26x slower (AMD EPYC
    # family 25).
    q = q * q.shape[-1]**-0.5
    keys, v = k.transpose(-2, -1).contiguous(), v.contiguous()
    chunks = [
        F.dropout((q[:, :, i:i + rows] @ keys).softmax(dim=-1),
                  p=dropout_p) @ v for i in range(0, N, rows)
    ]
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=2)


class SelfAttention(nn.Module):
    """Multi-head self-attention on ``nn.MultiheadAttention``'s parameters.

    The parameters live in ``self.attn`` (an ``nn.MultiheadAttention``) so the
    released names ``attn.in_proj_weight`` and ``attn.out_proj.*`` are kept,
    but the forward pass calls ``F.scaled_dot_product_attention`` (fused
    kernels on CPU and GPU), except where explicit matmuls are faster
    (:func:`prefers_explicit_attention`). ``fused_attn=False`` computes the
    softmax explicitly everywhere, as a reference.
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 qkv_bias: bool = True,
                 attn_drop_rate: float = 0.,
                 proj_drop_rate: float = 0.,
                 fused_attn: bool = True):
        super().__init__()
        if embed_dims % num_heads != 0:
            raise ValueError(f'embed_dims ({embed_dims}) must be divisible by '
                             f'num_heads ({num_heads})')
        self.num_heads = num_heads
        self.fused_attn = fused_attn
        self.attn = nn.MultiheadAttention(
            embed_dims, num_heads, dropout=attn_drop_rate, bias=qkv_bias,
            batch_first=True)
        self.proj_drop = nn.Dropout(proj_drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, N, C)."""
        B, N, C = x.shape
        qkv = F.linear(x, self.attn.in_proj_weight, self.attn.in_proj_bias)
        q, k, v = qkv.view(B, N, 3, self.num_heads,
                           C // self.num_heads).permute(2, 0, 3, 1, 4)
        drop = self.attn.dropout if self.training else 0.
        if not self.fused_attn:
            x = explicit_attention(q, k, v, drop)
        elif prefers_explicit_attention(q, drop):
            x = explicit_attention(q, k, v, max_scores_bytes=CPU_SCORES_BYTES)
        else:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.attn.out_proj(x))


class FFN(nn.Module):
    """Two-layer MLP named as mmcv's ``FFN`` (``layers.0.0``, ``layers.1``)."""

    def __init__(self,
                 embed_dims: int,
                 hidden_dims: int,
                 act_cfg: dict,
                 drop_rate: float = 0.):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(
                nn.Linear(embed_dims, hidden_dims),
                build_activation_layer(act_cfg), nn.Dropout(drop_rate)),
            nn.Linear(hidden_dims, embed_dims), nn.Dropout(drop_rate))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TransformerEncoderLayer(nn.Module):
    """Pre-norm block: x + attn(ln1(x)), then x + ffn(ln2(x))."""

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 mlp_ratio: float,
                 qkv_bias: bool,
                 drop_rate: float,
                 attn_drop_rate: float,
                 drop_path_rate: float,
                 norm_cfg: dict,
                 act_cfg: dict,
                 fused_attn: bool = True):
        super().__init__()
        self.ln1 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.attn = SelfAttention(embed_dims, num_heads, qkv_bias,
                                  attn_drop_rate, drop_rate, fused_attn)
        self.ln2 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.ffn = FFN(embed_dims, int(embed_dims * mlp_ratio), act_cfg,
                       drop_rate)
        self.drop_path = DropPath(
            drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.ln1(x)))
        return x + self.drop_path(self.ffn(self.ln2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches; pads the bottom/right to a multiple of p
    (mmcv's ``corner`` padding) so any input size works."""

    def __init__(self, in_channels: int, embed_dims: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        # No bias, as in the released checkpoints: a bias would only add a
        # constant to every patch token, which the position embedding holds.
        self.projection = nn.Conv2d(
            in_channels, embed_dims, kernel_size=patch_size,
            stride=patch_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        H, W = x.shape[-2:]
        x = F.pad(x, (0, -W % p, 0, -H % p))
        return self.projection(x)


@MODELS.register_module()
class RegionProxyViT(BaseModule):
    """ViT whose patch tokens serve as region proxies (RegionProxy, CVPR 2022).

    Tokens are ``[cls, (dist), patches]``; the backbone returns the patch
    tokens after each layer in ``out_indices`` as (B, C, H/p, W/p) maps.

    Args:
        img_size (int | tuple): training size; fixes the position-embedding
            grid, which is resized (``interpolate_mode``) for other inputs.
        patch_size (int): patch size of the plain ViT (ignored by hybrid
            stems, whose stride is 32).
        in_channels (int): image channels. Default: 3.
        embed_dims (int): token width C.
        num_layers (int): number of transformer layers.
        num_heads (int): attention heads.
        mlp_ratio (float): FFN hidden width / C. Default: 4.
        out_indices (int | Sequence[int]): layers whose outputs are returned;
            ``-1`` is the token map before the first layer. Default: (4, 11).
        qkv_bias (bool): bias in the qkv projection. Default: True.
        drop_rate (float): dropout after attention/FFN/pos-embed.
        attn_drop_rate (float): attention dropout.
        drop_path_rate (float): stochastic depth, linearly increasing to this.
        with_cls_token (bool): keep the cls (and dist) tokens in the sequence.
        final_norm (bool): LayerNorm ``ln1`` after the last layer.
        norm_cfg (dict): token norm. Default: LN with eps 1e-6.
        act_cfg (dict): FFN activation. Default: GELU.
        norm_eval (bool): keep norm layers in eval mode while training.
        interpolate_mode (str): position-embedding resize mode.
        deit (bool): add DeiT's distillation token.
        embed_type (str | None): ``None`` for patches, or a hybrid ResNetV2
            stem: ``'vit_small_r26_s32_384'``, ``'vit_large_r50_s32_384'``.
        fused_attn (bool): use ``F.scaled_dot_product_attention``.
        with_cp (bool): activation checkpointing: keep only each layer's
            (and each hybrid-stem stage's) input in training and recompute
            the layer in backward; less memory, about a third more compute.
            Default: False.
        frozen_stages (int): the frozen prefix, as in mmpretrain's ViT: -1
            freezes nothing; 0 the patch embedding (or hybrid stem), the
            position embedding and the cls/dist tokens; N also the first N
            layers; ``num_layers`` the whole backbone, ``ln1`` included.
            Frozen parts do not require grad, stay in eval mode through
            ``train()`` (no dropout, no drop path) and build no autograd
            graph (the embedding runs under ``torch.no_grad``), so their
            activations are not kept. Default: -1.
        pretrained (str, optional): timm/DeiT/mmseg checkpoint of the
            backbone, converted on load (see ``checkpoint_filter_fn``).
        init_cfg (dict, optional): mmengine init config; a ``Pretrained``
            entry is loaded the same way as ``pretrained``.
    """

    def __init__(self,
                 img_size: Union[int, Sequence[int]] = 512,
                 patch_size: int = 16,
                 in_channels: int = 3,
                 embed_dims: int = 768,
                 num_layers: int = 12,
                 num_heads: int = 12,
                 mlp_ratio: float = 4.,
                 out_indices: Union[int, Sequence[int]] = (4, 11),
                 qkv_bias: bool = True,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 with_cls_token: bool = True,
                 final_norm: bool = True,
                 norm_cfg: dict = dict(type='LN', eps=1e-6),
                 act_cfg: dict = dict(type='GELU'),
                 norm_eval: bool = False,
                 interpolate_mode: str = 'bicubic',
                 deit: bool = False,
                 embed_type: Optional[str] = None,
                 fused_attn: bool = True,
                 with_cp: bool = False,
                 frozen_stages: int = -1,
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[dict] = None):
        check_pretrained(pretrained)
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError(
                    'give either pretrained or init_cfg, not both')
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        super().__init__(init_cfg=init_cfg)
        img_size = checked_img_size(img_size)
        self.in_channels = in_channels
        for name, value in [('patch_size', patch_size),
                            ('embed_dims', embed_dims),
                            ('num_heads', num_heads)]:
            if value < 1:
                raise ValueError(f'{name} must be positive, got {value}')
        if num_layers < 0:
            raise ValueError(f'num_layers must be >= 0, got {num_layers}')
        check_frozen_stages(frozen_stages, num_layers)
        if isinstance(out_indices, int):
            out_indices = (out_indices, )
        for index in out_indices:
            if not -1 <= index < num_layers:
                raise ValueError(
                    f'out_indices entry {index} is out of range: expected '
                    f'-1 (before the first layer) to {num_layers - 1} '
                    f'(num_layers={num_layers})')

        if embed_type is None:
            self.patch_embed = PatchEmbed(in_channels, embed_dims, patch_size)
            self.patch_size = patch_size
        elif embed_type in HYBRID_STEMS:
            self.patch_embed = HybridPatchEmbed(embed_type, in_channels,
                                                embed_dims, with_cp)
            self.patch_size = self.patch_embed.stride
        else:
            raise ValueError(f'unknown embed_type {embed_type!r}: expected '
                             f'None or one of {sorted(HYBRID_STEMS)}')
        if img_size[0] % self.patch_size or img_size[1] % self.patch_size:
            raise ValueError(f'img_size {img_size} is not divisible by the '
                             f'patch size {self.patch_size}')
        self.img_size = img_size
        self.grid_size = (img_size[0] // self.patch_size,
                          img_size[1] // self.patch_size)
        self.embed_dims = embed_dims
        self.out_indices = tuple(out_indices)
        self.with_cls_token = with_cls_token
        self.norm_eval = norm_eval
        self.interpolate_mode = interpolate_mode
        self.with_cp = with_cp

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims))
        self.dist_token = nn.Parameter(torch.zeros(
            1, 1, embed_dims)) if deit else None
        self.num_prefix_tokens = 2 if deit else 1
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + self.num_prefix_tokens, embed_dims))
        self.drop_after_pos = nn.Dropout(drop_rate)

        # stochastic depth rises linearly to drop_path_rate at the last layer
        dpr = [
            drop_path_rate * i / max(num_layers - 1, 1)
            for i in range(num_layers)
        ]
        self.layers = nn.ModuleList([
            TransformerEncoderLayer(embed_dims, num_heads, mlp_ratio,
                                    qkv_bias, drop_rate, attn_drop_rate,
                                    dpr[i], norm_cfg, act_cfg, fused_attn)
            for i in range(num_layers)
        ])
        self.final_norm = final_norm
        if final_norm:
            self.ln1 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.frozen_stages = frozen_stages
        for param in self.frozen_parameters():
            param.requires_grad_(False)

    @property
    def fused_attn(self) -> bool:
        return self.layers[0].attn.fused_attn

    @fused_attn.setter
    def fused_attn(self, value: bool):
        for layer in self.layers:
            layer.attn.fused_attn = value

    def frozen_modules(self) -> List[nn.Module]:
        """The modules of the first ``frozen_stages`` stages (embedding,
        then layers), in the order they run."""
        if self.frozen_stages < 0:
            return []
        modules = [self.patch_embed, self.drop_after_pos]
        modules += self.layers[:self.frozen_stages]
        if self.frozen_stages == len(self.layers) and self.final_norm:
            modules.append(self.ln1)
        return modules

    def frozen_parameters(self) -> List[nn.Parameter]:
        """The parameters of :meth:`frozen_modules`, with the position
        embedding and the prefix tokens."""
        if self.frozen_stages < 0:
            return []
        tokens = [self.pos_embed, self.cls_token, self.dist_token]
        return [p for p in tokens if p is not None] + [
            p for m in self.frozen_modules() for p in m.parameters()
        ]

    def init_weights(self):
        if self.init_cfg is not None and self.init_cfg.get(
                'type') == 'Pretrained':
            self.load_pretrained(self.init_cfg['checkpoint'])
            return
        trunc_normal_(self.pos_embed, std=.02)
        trunc_normal_(self.cls_token, std=.02)
        if self.dist_token is not None:
            trunc_normal_(self.dist_token, std=.02)
        for name, m in self.named_modules():
            if name.startswith('patch_embed.backbone'):
                continue  # timm initialises its ResNetV2 stem itself
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for layer in self.layers:
            attn = layer.attn.attn
            trunc_normal_(attn.in_proj_weight, std=.02)
            if attn.in_proj_bias is not None:
                nn.init.zeros_(attn.in_proj_bias)

    def load_pretrained(self, filename: str):
        """Load a timm, DeiT or mmseg-ViT checkpoint into the backbone.

        The file (a path or URL) is read safely (:func:`load_checkpoint_file`)
        and converted by :func:`checkpoint_filter_fn`; missing and
        unexpected keys are reported in a warning with the count loaded, a
        file of which no key fits or tensors of another shape refused (a
        CheckpointError).
        """
        checkpoint = load_checkpoint_file(filename)
        state_dict = checkpoint_filter_fn(checkpoint, self)
        own = list(self.state_dict())
        if not set(own) & set(state_dict):
            theirs = list(state_dict)
            raise CheckpointError(
                f'none of the {len(theirs)} keys of {filename} fits '
                f'{type(self).__name__} ({len(own)} keys): the file has '
                f'{", ".join(theirs[:3]) or "no tensors"}'
                f'{" ..." if len(theirs) > 3 else ""}, the backbone '
                f'{", ".join(own[:3])} ...; expected the ImageNet weights '
                'of a ViT (timm, DeiT or mmseg names)')
        try:
            missing, unexpected = self.load_state_dict(state_dict,
                                                       strict=False)
        except RuntimeError:  # tensors of another shape: list them briefly
            check_state_dict_fits(
                self, state_dict, filename, 'Expected the ImageNet weights '
                'of a ViT of the backbone\'s width and depth')
            raise
        if not missing and not unexpected:
            print_log(f'loaded {filename} into {type(self).__name__}: all '
                      f'{len(state_dict)} tensors fit', logger='current')
            return
        print_log(
            f'{filename} only partly fits {type(self).__name__}: '
            f'{len(own) - len(missing)} of {len(own)} tensors loaded; '
            f'{len(missing)} missing keys ({", ".join(missing[:5]) or "-"}'
            f'{" ..." if len(missing) > 5 else ""}), {len(unexpected)} '
            f'unexpected keys ({", ".join(unexpected[:5]) or "-"}'
            f'{" ..." if len(unexpected) > 5 else ""})',
            logger='current', level=logging.WARNING)

    def _pos_embed(self, x: torch.Tensor, grid: Tuple[int, int]):
        prefix = [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.dist_token is not None:
            prefix.append(self.dist_token.expand(x.shape[0], -1, -1))
        x = torch.cat(prefix + [x], dim=1)
        pos_embed = resample_abs_pos_embed(
            self.pos_embed, list(grid), list(self.grid_size),
            self.num_prefix_tokens, self.interpolate_mode, antialias=False)
        return self.drop_after_pos(x + pos_embed)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """(B, in_channels, H, W) -> one (B, C, H/p, W/p) map per out index."""
        check_images(x, self.in_channels)
        # A frozen embedding runs under no_grad; then no input of the frozen
        # layers requires grad, and autograd records nothing for them either.
        with torch.set_grad_enabled(torch.is_grad_enabled()
                                    and self.frozen_stages < 0):
            x = self.patch_embed(x)
            B, C, h, w = x.shape
            x = self._pos_embed(x.flatten(2).transpose(1, 2), (h, w))
        num_prefix = self.num_prefix_tokens
        if not self.with_cls_token:
            x, num_prefix = x[:, num_prefix:], 0

        def token_map(tokens):
            return tokens[:, num_prefix:].transpose(1, 2).reshape(B, C, h, w)

        outs = {-1: token_map(x)} if -1 in self.out_indices else {}
        for i, layer in enumerate(self.layers):
            # (not x.requires_grad: after frozen layers it is False, but the
            # layer's weights need the recomputation all the same)
            if self.with_cp and torch.is_grad_enabled():
                # The RNG state is restored for the recomputation, so drop
                # path and dropout draw the same masks.
                x = cp.checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
            if i == len(self.layers) - 1 and self.final_norm:
                x = self.ln1(x)
            if i in self.out_indices:
                outs[i] = token_map(x)
        return [outs[i] for i in self.out_indices]

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, (nn.LayerNorm, nn.GroupNorm,
                                  nn.modules.batchnorm._BatchNorm)):
                    m.eval()
        for m in self.frozen_modules():
            m.eval()
        return self
