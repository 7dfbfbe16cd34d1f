"""Any timm Vision Transformer as the region-proxy backbone of RegionProxy.

"Semantic Segmentation by Early Region Proxy" (Zhang et al., CVPR 2022,
https://arxiv.org/abs/2203.14043) treats the patch tokens of a plain ViT as
the proxies of image regions. :class:`TimmRegionProxyViT` makes the ViTs of
timm such a backbone, by name: AugReg ViTs, DeiT, DeiT-III
(https://arxiv.org/abs/2204.07118), DINOv2 with and without registers
(https://arxiv.org/abs/2304.07193, https://arxiv.org/abs/2309.16588) and
EVA-02 (https://arxiv.org/abs/2303.11331). The token maps come from timm's
own ``forward_intermediates``, so position embeddings are resampled and
rotary embeddings computed by timm for every input size.
"""
import re
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import timm
import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmseg.registry import MODELS

from ..utils.checkpoint_filter import part_under, unwrap_state_dict
from ..utils.safe_checkpoint_loader import (CheckpointError,
                                            check_state_dict_fits,
                                            load_checkpoint_file)
from .arg_checks import check_frozen_stages, check_images, checked_img_size

__all__ = ['TimmRegionProxyViT']

# timm model modules (short names, as timm's registry keys them) whose models
# are plain, single-scale ViTs with one token per patch.
SUPPORTED_TIMM_MODULES = ('vision_transformer', 'deit', 'eva')

# Arguments of timm.create_model that the backbone sets itself.
_OWN_TIMM_ARGS = ('pretrained', 'num_classes', 'global_pool', 'img_size',
                  'drop_path_rate', 'dynamic_img_size', 'dynamic_img_pad')

# ImageNet pooling and classifier weights in a timm state dict, which a
# segmentation backbone does not have.
_CLASSIFIER_KEY = re.compile(r'^(head|head_dist|attn_pool)\.')


def _check_model_name(model_name: str) -> None:
    """Refuse, by name, what is not a plain timm ViT with patch tokens."""
    if not isinstance(model_name, str) or not timm.is_model(model_name):
        raise ValueError(f'model_name={model_name!r} is not a timm model '
                         '(see timm.list_models())')
    if not timm.models.is_model_in_modules(model_name,
                                           SUPPORTED_TIMM_MODULES):
        raise ValueError(
            f'model_name={model_name!r} is not supported: TimmRegionProxyViT '
            'takes plain ViTs with patch tokens from timm\'s '
            f'{", ".join(SUPPORTED_TIMM_MODULES)} modules, not hierarchical, '
            'hybrid (CNN stem) or convolutional models')


def _timm_weights(checkpoint: Any) -> Any:
    """The timm weights in a loaded file: a timm state dict as it is; of a
    segmentor checkpoint with a :class:`TimmRegionProxyViT` (or of its
    ``state_dict()``), the part under ``(backbone.)vit.``. Anything else is
    returned for :meth:`TimmRegionProxyViT.load_timm_state_dict` to
    refuse."""
    if not isinstance(checkpoint, Mapping):
        return checkpoint
    return part_under(unwrap_state_dict(checkpoint), 'vit.')


@MODELS.register_module()
class TimmRegionProxyViT(BaseModule):
    """A timm ViT whose patch tokens serve as region proxies (RegionProxy).

    Builds ``timm.create_model(model_name)`` without classifier or pooling,
    with dynamic input size and padding, and returns the patch tokens (class,
    distillation and register tokens dropped) after each layer in
    ``out_indices`` as (B, C, h, w) maps, h = ceil(H / p), w = ceil(W / p).
    The tokens of the last layer go through timm's final norm (for models
    that normalise after pooling, such as EVA-02, that norm is timm's
    ``fc_norm``, applied to every token); earlier layers are not normalised,
    as in the published RegionProxy models.

    Inputs of any size work: timm zero-pads the bottom and right to a
    multiple of the patch, resamples the position embedding (bicubic) and
    computes rotary embeddings for the grid. The head's output then covers
    the padded image, so configs pad crops to a multiple of the patch in
    the data preprocessor (512 -> 518 for p = 14) and slide windows of that
    size: the logits stay aligned with the labels.

    Args:
        model_name (str): a timm model, optionally with a weights tag, e.g.
            ``'vit_small_patch14_reg4_dinov2.lvd142m'``.
        img_size (int | tuple[int, int], optional): training size, which
            fixes the position-embedding grid; a multiple of the patch size.
            Default: timm's for the model.
        out_indices (int | Sequence[int]): layers (0-based) whose tokens are
            returned, in this order. Default: (4, 11).
        pretrained (str, optional): None keeps timm's random initialisation;
            ``'timm'`` downloads timm's published weights for ``model_name``
            (needs network); a path loads a timm ``state_dict`` file, e.g.
            ``timm.create_model(name, pretrained=True).state_dict()`` saved
            with ``torch.save``, or the backbone part of a segmentor
            checkpoint with this backbone. Read when ``init_weights()``
            runs.
        drop_path_rate (float): stochastic depth, rising to this at the last
            layer (timm's rule). Default: 0.
        timm_kwargs (dict, optional): more ``timm.create_model`` arguments
            (e.g. ``depth=4`` for a small model), except those set here.
        frozen_stages (int): the frozen prefix, as in mmpretrain's ViT: -1
            freezes nothing; 0 timm's stem (patch embedding, position or
            rotary embedding, class/register/distillation tokens, pre-norm);
            N also the first N blocks; ``num_layers`` the whole model, final
            norm included. Frozen parts do not require grad and stay in eval
            mode through ``train()`` (no dropout, no drop path); autograd
            records nothing for them, so their activations are not kept (a
            wholly frozen model runs under ``torch.no_grad``). Default: -1.
        init_cfg (None): not supported; weights come from ``pretrained``.

    Attributes:
        embed_dims (int): token width C.
        patch_size (int): patch size p, the stride of the token maps.
        num_layers (int): transformer layers.
    """

    def __init__(self,
                 model_name: str,
                 img_size: Optional[Union[int, Sequence[int]]] = None,
                 out_indices: Union[int, Sequence[int]] = (4, 11),
                 pretrained: Optional[str] = None,
                 drop_path_rate: float = 0.,
                 timm_kwargs: Optional[Dict[str, Any]] = None,
                 frozen_stages: int = -1,
                 init_cfg: Optional[dict] = None):
        if init_cfg is not None:
            raise ValueError(f'init_cfg={init_cfg!r}: TimmRegionProxyViT '
                             'loads weights from pretrained=None | "timm" | '
                             'PATH')
        super().__init__()
        _check_model_name(model_name)
        if pretrained is not None and not isinstance(pretrained, str):
            raise ValueError(f'pretrained={pretrained!r}: expected None, '
                             '"timm" or the path of a timm state_dict file')
        if not 0. <= drop_path_rate < 1.:
            raise ValueError(
                f'drop_path_rate={drop_path_rate} is not in [0, 1)')
        timm_kwargs = dict(timm_kwargs or {})
        clashing = sorted(set(timm_kwargs) & set(_OWN_TIMM_ARGS))
        if clashing:
            raise ValueError(f'timm_kwargs={timm_kwargs!r} sets {clashing}, '
                             'which are arguments of TimmRegionProxyViT or '
                             'fixed by it')
        if img_size is not None:
            timm_kwargs['img_size'] = checked_img_size(img_size)
        if not timm.models.is_model_in_modules(model_name, ('deit', )):
            # No pooling: the final norm becomes a per-token norm (EVA-02
            # otherwise keeps it in fc_norm) and no unused pooling weights
            # remain. DeiT's distilled models insist on token pooling, which
            # has neither.
            timm_kwargs['global_pool'] = ''
        self.vit = timm.create_model(
            model_name,
            pretrained=False,
            num_classes=0,
            drop_path_rate=drop_path_rate,
            dynamic_img_size=True,
            dynamic_img_pad=True,
            **timm_kwargs)

        patch_h, patch_w = self.vit.patch_embed.patch_size
        if patch_h != patch_w:
            raise ValueError(f'model_name={model_name!r} has {patch_h}x'
                             f'{patch_w} patches; only square ones are '
                             'supported')
        self.img_size = tuple(self.vit.patch_embed.img_size)
        if self.img_size[0] % patch_h or self.img_size[1] % patch_w:
            raise ValueError(f'img_size={self.img_size} is not a multiple of '
                             f'the patch size {patch_h} of {model_name}')
        self.model_name = model_name
        self.patch_size = patch_h
        self.embed_dims = self.vit.embed_dim
        self.num_layers = len(self.vit.blocks)
        if isinstance(out_indices, int):
            out_indices = (out_indices, )
        if len(out_indices) == 0 or not all(
                0 <= i < self.num_layers for i in out_indices):
            raise ValueError(
                f'out_indices={tuple(out_indices)} must be layers 0 to '
                f'{self.num_layers - 1} of {model_name} (timm has no map '
                'before the first layer)')
        self.out_indices = tuple(out_indices)
        self.pretrained = pretrained
        check_frozen_stages(frozen_stages, self.num_layers)
        self.frozen_stages = frozen_stages
        for param in self.frozen_parameters():
            param.requires_grad_(False)

    def frozen_modules(self) -> List[nn.Module]:
        """The modules of the first ``frozen_stages`` stages (stem, then
        blocks; with all blocks the final norm too), in the order they run."""
        if self.frozen_stages < 0:
            return []
        # timm registers the stem's modules before the blocks and the final
        # norm (and the unused pooling/classifier) after them
        children = [module for _, module in self.vit.named_children()]
        split = children.index(self.vit.blocks)
        modules = children[:split] + list(self.vit.blocks[:self.frozen_stages])
        if self.frozen_stages == self.num_layers:
            modules += children[split + 1:]
        return modules

    def frozen_parameters(self) -> List[nn.Parameter]:
        """The parameters of :meth:`frozen_modules`, with the position
        embedding and the class/register/distillation tokens."""
        if self.frozen_stages < 0:
            return []
        return list(self.vit.parameters(recurse=False)) + [
            p for m in self.frozen_modules() for p in m.parameters()
        ]

    def init_weights(self):
        """Load ``pretrained``; with None, keep the weights timm drew."""
        if self.pretrained is None:
            return
        if self.pretrained == 'timm':
            source = f'timm weights of {self.model_name}'
            state_dict = timm.create_model(
                self.model_name, pretrained=True).state_dict()
        else:
            source = self.pretrained
            state_dict = _timm_weights(
                load_checkpoint_file(self.pretrained, map_location='cpu'))
        self.load_timm_state_dict(state_dict, source)

    def load_timm_state_dict(self, state_dict: Mapping[str, torch.Tensor],
                             source: str = 'state_dict') -> None:
        """Load a timm state dict of ``model_name``, strictly.

        The model's timm ``checkpoint_filter_fn`` runs first, as in timm's
        own loading (it resamples the position embedding to ``img_size``).
        The ImageNet classifier and pooling
        (``head``, ``head_dist``, ``attn_pool``) are dropped, and a pooling
        norm ``fc_norm`` becomes the final ``norm`` where the file has none.
        Every other key must match the backbone exactly.

        Args:
            state_dict (Mapping[str, Tensor]): e.g.
                ``timm.create_model(model_name).state_dict()``.
            source (str): where the weights come from, for the messages.

        Raises:
            CheckpointError: keys missing, unexpected or of another shape.
        """
        if not isinstance(state_dict, Mapping):
            raise CheckpointError(f'{source} holds a '
                                  f'{type(state_dict).__name__}, expected a '
                                  'timm state_dict')
        timm_module = sys.modules[type(self.vit).__module__]
        weights = timm_module.checkpoint_filter_fn(dict(state_dict), self.vit)
        dropped = sorted(k for k in weights if _CLASSIFIER_KEY.match(k))
        has_norm = any(k.startswith('norm.') for k in weights)
        loaded = {}
        for key, value in weights.items():
            if key in dropped:
                continue
            if key.startswith('fc_norm.'):
                if has_norm:
                    dropped.append(key)
                    continue
                key = key[len('fc_'):]
            loaded[key] = value
        check_state_dict_fits(
            self.vit, loaded, source,
            f'Expected timm weights of {self.model_name} (state_dict())')
        self.vit.load_state_dict(loaded, strict=True)
        print_log(
            f'loaded {source} into {type(self).__name__}({self.model_name}); '
            f'classifier/pooling keys dropped: {dropped or "none"}',
            logger='current')

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """(B, 3, H, W) -> one (B, C, ceil(H/p), ceil(W/p)) map per index
        in ``out_indices``."""
        check_images(x, self.vit.patch_embed.proj.in_channels)
        indices = sorted(set(self.out_indices))
        # timm runs every block in one call; for a frozen prefix autograd
        # records nothing anyway (no input of it requires grad)
        trainable = self.frozen_stages < self.num_layers
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            tokens = self.vit.forward_intermediates(
                x,
                indices=indices,
                output_fmt='NLC',
                intermediates_only=True,
                stop_early=True)
            maps = dict(zip(indices, tokens))  # (B, h*w, C), prefix dropped
            last = self.num_layers - 1
            if last in maps:
                maps[last] = self.vit.norm(maps[last])
        h, w = self.vit.patch_embed.dynamic_feat_size(x.shape[-2:])
        return [
            maps[i].transpose(1, 2).reshape(x.shape[0], -1, h, w)
            for i in self.out_indices
        ]

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self
