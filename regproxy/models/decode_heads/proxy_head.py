from typing import List, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule, DepthwiseSeparableConvModule
from mmengine.utils import to_2tuple
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.losses import CrossEntropyLoss
from mmseg.registry import MODELS
from mmseg.utils import SampleList
from timm.layers import trunc_normal_

from .resized_cross_entropy import resized_cross_entropy, without_autocast

__all__ = ['ProxyHead', 'neighbour_mask', 'proxy_logits_unfold']

NUM_NEIGHBOURS = 9  # the 3x3 window of regions around a token


def neighbour_mask(h: int, w: int, device=None) -> torch.Tensor:
    """(9, h, w) bool: whether neighbour n of token (i, j) lies in the grid.

    Neighbours are ordered row-major over the 3x3 window, as ``F.unfold``
    with ``kernel_size=3, padding=1`` orders them.
    """
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    offsets = torch.arange(NUM_NEIGHBOURS, device=device)
    dy = (offsets // 3 - 1).view(-1, 1, 1)
    dx = (offsets % 3 - 1).view(-1, 1, 1)
    return ((rows + dy >= 0) & (rows + dy < h) & (cols + dx >= 0)
            & (cols + dx < w))


def proxy_logits_unfold(region_logits: torch.Tensor,
                        affinity: torch.Tensor) -> torch.Tensor:
    """Straightforward form of the pixel logits, materialising 9·K·h·w.

    Args:
        region_logits (Tensor): (B, K, h, w).
        affinity (Tensor): (B, 9, rh, rw, h, w), softmax over the 9.

    Returns:
        Tensor: (B, K, h*rh, w*rw).
    """
    B, K, h, w = region_logits.shape
    rh, rw = affinity.shape[2:4]
    neighbours = F.unfold(region_logits, kernel_size=3, padding=1)
    neighbours = neighbours.view(B, K, NUM_NEIGHBOURS, h, w)
    out = torch.einsum('bnacij,bknij->bkiajc', affinity, neighbours)
    return out.reshape(B, K, h * rh, w * rw)


def proxy_logits(region_logits: torch.Tensor,
                 affinity: torch.Tensor) -> torch.Tensor:
    """Pixel logits as an affinity-weighted sum over the 9 neighbouring
    regions, accumulated one neighbour at a time so that no 9·K·h·w tensor
    is built. Same arguments and result as ``proxy_logits_unfold``.

    One row of sub-pixels (offset ``ry``) at a time is summed in a (B, rw,
    K, h, w) buffer, where every product runs over contiguous rows of
    tokens, then copied into the output: 4x faster than summing into the
    output's own layout, whose innermost run is only rw values, for a
    buffer of 1/rh of the output.
    """
    B, K, h, w = region_logits.shape
    rh, rw = affinity.shape[2:4]
    padded = F.pad(region_logits, (1, 1, 1, 1))
    out = region_logits.new_empty(B, K, h, rh, w, rw)
    row = region_logits.new_empty(B, rw, K, h, w)
    for ry in range(rh):
        row.zero_()
        for n in range(NUM_NEIGHBOURS):
            dy, dx = divmod(n, 3)
            shifted = padded[:, None, :, dy:dy + h, dx:dx + w]
            row.addcmul_(affinity[:, n, ry, :, None], shifted)
        out[:, :, :, ry].copy_(row.permute(0, 2, 3, 4, 1))
    return out.view(B, K, h * rh, w * rw)


@MODELS.register_module()
class ProxyHead(BaseDecodeHead):
    """Decode head of RegionProxy (Zhang et al., "Semantic Segmentation by
    Early Region Proxy", CVPR 2022, https://arxiv.org/abs/2203.14043).

    Every token of the last layer is a region: a Linear gives its class
    logits. From the mid-layer tokens a small conv branch predicts, for each
    of the rh x rw sub-pixels of a token, affinities to the 9 neighbouring
    regions; a pixel's logits are the softmax-weighted sum of those regions'
    logits. The output has stride patch_size / region_res.

    Args:
        in_channels (Sequence[int]): channels of the (mid, last) inputs.
        channels (int): width of the affinity branch.
        region_res (int | tuple[int, int]): sub-pixels per token, as an int r
            (r x r) or (rows, cols). Default: 4.
        dropout_ratio (float): dropout (``Dropout2d``) on the last-layer
            tokens before they are classified. Default: 0.
        use_unfold (bool): always combine the regions with ``F.unfold``,
            which materialises 9·K·h·w values (the reference form). By
            default inference accumulates one neighbour at a time and
            training (autograd) uses the unfold. Default: False.
        fused_loss (bool): compute a softmax ``CrossEntropyLoss`` (mean
            reduction, no sampler) and the accuracy with
            :func:`resized_cross_entropy`, a tile of label rows at a time;
            False, or any other ``loss_decode``, uses mmseg's
            ``loss_by_feat`` (the reference form). Default: True.
        **kwargs: ``BaseDecodeHead`` arguments (``num_classes``,
            ``in_index``, ``input_transform`` (only 'multiple_select'),
            ``conv_cfg``, ``norm_cfg``, ``act_cfg``,
            ``loss_decode``, ``align_corners``, ...).

    Under autocast the backbone runs in low precision, the head in the
    precision of its weights (float32 unless the model was converted), and
    so do the resizes of its logits: in bfloat16, on this project's CPU box
    (Intel Xeon with AMX), the final resize was slower (150 x 128 x 128 ->
    512 x 512: 194 vs 169 ms on one core) and the class map further from
    float32's (98.7% of the pixels the same, against 99.5%; ViT-Ti/16 at
    512 x 512, random weights).

    Call flow: ``loss(): forward() -> loss_by_feat()``,
    ``predict(): forward() -> predict_by_feat()`` (inherited).
    """

    def __init__(self,
                 in_channels: Sequence[int],
                 channels: int,
                 region_res: Union[int, Tuple[int, int]] = 4,
                 input_transform: str = 'multiple_select',
                 in_index: Sequence[int] = (0, 1),
                 dropout_ratio: float = 0.,
                 use_unfold: bool = False,
                 fused_loss: bool = True,
                 init_cfg=None,
                 **kwargs):
        # Checked before mmseg's base class, which asserts on in_channels.
        if not isinstance(in_channels, (list, tuple)) or len(in_channels) != 2:
            raise ValueError('ProxyHead takes two inputs (mid, last); got '
                             f'in_channels={in_channels}')
        region_res = to_2tuple(region_res)
        if len(region_res) != 2 or min(region_res) < 1:
            raise ValueError('region_res must be an int >= 1 or a pair of '
                             f'them, got {region_res}')
        if channels < 1:
            raise ValueError(f'channels must be positive, got {channels}')
        if input_transform != 'multiple_select':
            raise ValueError('ProxyHead needs its two inputs apart: '
                             "input_transform must be 'multiple_select', got "
                             f'{input_transform!r}')
        # No default init_cfg: the base class's targets conv_seg, which this
        # head does not have; init_weights() initialises the layers.
        super().__init__(
            in_channels,
            channels,
            input_transform=input_transform,
            in_index=in_index,
            dropout_ratio=dropout_ratio,
            init_cfg=init_cfg,
            **kwargs)
        self.region_res = tuple(region_res)
        mid_channels, last_channels = self.in_channels
        del self.conv_seg  # the Linear below classifies the regions
        # Nested to keep the released name ``mlp.0.0``.
        self.mlp = nn.Sequential(
            nn.Sequential(nn.Linear(last_channels, self.out_channels)))
        self.affinity_head = nn.Sequential(
            DepthwiseSeparableConvModule(
                mid_channels,
                channels,
                kernel_size=3,
                padding=1,
                conv_cfg=self.conv_cfg,
                norm_cfg=self.norm_cfg,
                act_cfg=self.act_cfg),
            ConvModule(
                channels,
                NUM_NEIGHBOURS * region_res[0] * region_res[1],
                kernel_size=1,
                conv_cfg=self.conv_cfg,
                norm_cfg=None,
                act_cfg=None))
        self.use_unfold = use_unfold
        self.fused_loss = fused_loss

    def init_weights(self):
        super().init_weights()
        linear = self.mlp[0][0]
        trunc_normal_(linear.weight, std=.02)
        nn.init.zeros_(linear.bias)
        nn.init.zeros_(self.affinity_head[1].conv.bias)

    def affinity(self, x_mid: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, 9, rh, rw, h, w) softmax affinities."""
        B, _, h, w = x_mid.shape
        logits = self.affinity_head(x_mid).view(B, NUM_NEIGHBOURS,
                                                *self.region_res, h, w)
        outside = ~neighbour_mask(h, w, x_mid.device)
        logits = logits.masked_fill(outside[:, None, None], float('-inf'))
        return logits.softmax(dim=1)

    def forward(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        """Backbone maps -> (B, K, h*rh, w*rw) pixel logits, in the
        precision of the head's weights."""
        dtype = self.mlp[0][0].weight.dtype
        with without_autocast(inputs[0].device.type):
            x_mid, x_last = (x.to(dtype)
                             for x in self._transform_inputs(inputs))
            if self.dropout is not None:  # before classifying, as mmseg's
                x_last = self.dropout(x_last)
            # Contiguous (B, K, h, w): the combination reads shifted
            # windows of it, 2.4x slower in the Linear's channels-last
            # layout.
            region_logits = self.mlp(x_last.permute(0, 2, 3, 1)).permute(
                0, 3, 1, 2).contiguous()
            # Accumulating saves memory in inference; under autograd it
            # keeps 9 partial products for backward, where one unfold is
            # smaller and faster (head forward+backward 95 vs 210 ms, 58 vs
            # 83 MiB).
            unfold = self.use_unfold or torch.is_grad_enabled()
            combine = proxy_logits_unfold if unfold else proxy_logits
            return combine(region_logits, self.affinity(x_mid))

    def loss_by_feat(self, seg_logits: torch.Tensor,
                     batch_data_samples: SampleList) -> dict:
        """mmseg's loss and accuracy of the (B, K, h, w) logits against
        the (B, 1, H, W) labels; with ``fused_loss``, without building the
        (B, K, H, W) resized logits (see :func:`resized_cross_entropy`).

        Returns:
            dict[str, Tensor]: the loss under ``loss_decode.loss_name`` and
            ``acc_seg``, the percentage of labelled pixels whose label has
            the largest logit.
        """
        loss_decode = self.loss_decode
        if not (self.fused_loss and self.sampler is None
                and type(loss_decode) is CrossEntropyLoss
                and not loss_decode.use_sigmoid and not loss_decode.use_mask
                and loss_decode.reduction == 'mean'):
            return super().loss_by_feat(seg_logits, batch_data_samples)
        labels = self._stack_batch_gt(batch_data_samples).squeeze(1)
        class_weight = loss_decode.class_weight
        if class_weight is not None:
            class_weight = seg_logits.new_tensor(class_weight)
        with without_autocast(seg_logits.device.type):
            loss, correct = resized_cross_entropy(seg_logits, labels,
                                                  class_weight,
                                                  self.ignore_index,
                                                  self.align_corners)
        labelled = (labels != self.ignore_index).sum()
        # The divisors of mmseg 1.2.2's cross_entropy and accuracy.
        if class_weight is None:
            divisor = (labelled
                       if loss_decode.avg_non_ignore else labels.numel())
        else:
            weights = class_weight[labels]
            if loss_decode.avg_non_ignore:
                weights[labels == self.ignore_index] = 0
            divisor = weights.sum()
        eps = torch.finfo(torch.float32).eps
        accuracy = (correct + eps) * (100. / (labelled + eps))
        return {
            loss_decode.loss_name:
            loss_decode.loss_weight * (loss / (divisor + eps)),
            'acc_seg': accuracy.view(1)
        }
