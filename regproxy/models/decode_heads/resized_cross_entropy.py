"""Cross-entropy of bilinearly resized logits, a tile of label rows at a time.

mmseg's ``BaseDecodeHead.loss_by_feat`` resizes a head's (B, K, h, w)
logits to the label size (B, K, H, W), then takes the cross-entropy and the
top-k accuracy; autograd keeps the resized logits and their log-softmax, two
K x H x W copies, for backward, and the resize's backward is slow on the
CPU. :func:`resized_cross_entropy` resizes and scores one tile of label rows
at a time and takes the tile's gradient back to the logits in the same
pass: the same loss and gradient (to rounding), and no K x H x W tensor,
only tiles of a few MiB.
"""
import contextlib
from typing import Optional, Tuple

import torch

__all__ = [
    'without_autocast', 'bilinear_taps', 'rows_matrix', 'resize_columns',
    'resize_columns_backward', 'resize_rows', 'resize_rows_backward',
    'resized_cross_entropy'
]

# Elements (B * K * rows * W) of one tile. CPU: 8 MiB of float32; for 150
# classes at 512 x 512, batch 2, on two cores as fast as 16 MiB and 1.2x
# faster than 4 or 32 MiB. Other devices (GPUs): 256 MiB, so that a batch
# takes a few tiles of some twenty kernel launches each (not measured on a
# GPU).
CPU_TILE_ELEMENTS = 2**21
GPU_TILE_ELEMENTS = 2**26


def without_autocast(device_type: str):
    """A context that switches autocast off for ``device_type``; nothing for
    devices without autocast (such as ``meta``, where FLOPs are counted)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def bilinear_taps(
        start: int,
        stop: int,
        in_size: int,
        out_size: int,
        align_corners: bool,
        dtype: torch.dtype = torch.float32,
        device=None
) -> Tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The input rows (or columns) that output rows ``start:stop`` of a
    bilinear resize from ``in_size`` to ``out_size`` rows read, as
    ``F.interpolate`` (without antialiasing) computes them: in ``dtype``,
    which is float64 for float64 inputs and float32 for the others.

    Returns:
        tuple: ``(first, last, top, bottom, weight)``: output row ``i`` is
        ``(1 - weight[i]) * band[top[i]] + weight[i] * band[bottom[i]]``
        where ``band`` holds the input rows ``first:last``; ``top`` and
        ``bottom`` (int64) and ``weight`` (``dtype``) have ``stop - start``
        entries.
    """
    rows = torch.arange(start, stop, device=device, dtype=dtype)
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.
        source = rows * scale
    else:
        source = ((rows + 0.5) * (in_size / out_size) - 0.5).clamp(min=0)
    top = source.long().clamp(max=in_size - 1)
    bottom = (top + 1).clamp(max=in_size - 1)
    weight = source - top
    first, last = int(top[0]), int(bottom[-1]) + 1
    return first, last, top - first, bottom - first, weight


def resize_columns(band: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of the width, with the rows moved before the
    classes: (B, K, rows, w) -> (B, rows, K, W), one matrix product with
    the (W, w) :func:`rows_matrix` of the columns.

    The classes stay out of the last dimension: torch's CPU log-softmax
    over a last dimension shorter than one vector (16 floats with AVX-512)
    runs element by element, 13x slower for 8 classes; over a middle
    dimension it runs along the contiguous columns for any class count.
    """
    return band.transpose(1, 2) @ matrix.T


def resize_columns_backward(grad: torch.Tensor,
                            matrix: torch.Tensor) -> torch.Tensor:
    """Gradient of :func:`resize_columns`: (B, rows, K, W) -> (B, K, rows,
    w)."""
    return (grad @ matrix).transpose(1, 2)


def rows_matrix(top: torch.Tensor, bottom: torch.Tensor,
                weight: torch.Tensor, num_rows: int) -> torch.Tensor:
    """The (T, rows) matrix of the taps of T output rows (from
    :func:`bilinear_taps`): two entries per row, ``1 - weight`` and ``weight``
    (one entry of 1 where both taps are the same row)."""
    rows = torch.arange(len(top), device=top.device)
    matrix = weight.new_zeros(len(top), num_rows)
    matrix.index_put_((rows, top), 1 - weight, accumulate=True)
    matrix.index_put_((rows, bottom), weight, accumulate=True)
    return matrix


def resize_rows(band: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of the height: (B, rows, ...) -> (B, T, ...).

    One matrix product with the (T, rows) :func:`rows_matrix`: its zeros
    add nothing, and it replaces a lerp of two rows per output row (many
    small operations, slow on two threads).
    """
    B, num_rows = band.shape[:2]
    out = matrix @ band.view(B, num_rows, -1)
    return out.view(B, -1, *band.shape[2:])


def resize_rows_backward(grad: torch.Tensor,
                         matrix: torch.Tensor) -> torch.Tensor:
    """Gradient of :func:`resize_rows`: (B, T, ...) -> (B, rows, ...)."""
    B, T = grad.shape[:2]
    out = matrix.T @ grad.reshape(B, T, -1)
    return out.view(B, -1, *grad.shape[2:])


def _tiles(logits: torch.Tensor, labels: torch.Tensor, align_corners: bool,
           tile_elements: int):
    """Yield ``(first, last, rows matrix, label tile)`` over the label rows:
    the logit rows ``first:last`` that a tile reads, the tile's
    :func:`rows_matrix` and its labels."""
    B, K, h, _ = logits.shape
    H, W = labels.shape[1:]
    step = max(1, tile_elements // (B * K * W))
    dtype = torch.promote_types(logits.dtype, torch.float32)
    for start in range(0, H, step):
        stop = min(start + step, H)
        first, last, *taps = bilinear_taps(start, stop, h, H,
                                           align_corners, dtype,
                                           logits.device)
        matrix = rows_matrix(*taps, last - first).to(logits.dtype)
        yield first, last, matrix, labels[:, start:stop]


def _columns_matrix(logits: torch.Tensor, width: int,
                    align_corners: bool) -> torch.Tensor:
    """The (width, w) :func:`rows_matrix` of all output columns."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    taps = bilinear_taps(0, width, logits.shape[3], width, align_corners,
                         dtype, logits.device)[2:]
    return rows_matrix(*taps, logits.shape[3]).to(logits.dtype)


def _pixel_weights(labels: torch.Tensor, class_weight: Optional[torch.Tensor],
                   ignore_index: int, dtype: torch.dtype):
    """(class index safe to gather, loss weight) of every pixel: the class
    weight of its label, 0 where unlabelled."""
    labelled = labels != ignore_index
    safe = labels.masked_fill(~labelled, 0)
    if class_weight is None:
        return safe, labelled.to(dtype)
    return safe, class_weight[safe].to(dtype) * labelled


class _TiledCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy and correct count over tiles, with the gradient
    (see :func:`resized_cross_entropy`)."""

    @staticmethod
    def forward(ctx, logits, labels, class_weight, ignore_index,
                align_corners, tile_elements):
        columns = _columns_matrix(logits, labels.shape[2], align_corners)
        loss = logits.new_zeros(())
        correct = labels.new_zeros(())
        # The loss is a sum, so its gradient is known here, up to the factor
        # backward() receives: computing it now spares recomputing every
        # tile in backward (the logits' gradient is as small as they are).
        grad = torch.zeros_like(logits) if ctx.needs_input_grad[0] else None
        for first, last, matrix, tile_labels in _tiles(logits, labels,
                                                       align_corners,
                                                       tile_elements):
            # (B, T, K, W): softmax and reductions over the classes, dim 2.
            tile = resize_rows(
                resize_columns(logits[:, :, first:last], columns), matrix)
            tile_labels = tile_labels.unsqueeze(2)
            safe, weight = _pixel_weights(tile_labels, class_weight,
                                          ignore_index, tile.dtype)
            log_p = tile.log_softmax(2)
            picked = log_p.gather(2, safe)
            loss -= (picked * weight).sum()
            # Correct where the label's (log-)probability is the largest: a
            # comparison instead of an argmax, which is 5x slower on the CPU.
            best = picked >= log_p.amax(2, keepdim=True)
            correct += (best & (tile_labels != ignore_index)).sum()
            if grad is None:
                continue
            # d(loss)/d(logit) = weight * (softmax - one-hot of label)
            tile_grad = log_p.exp_().mul_(weight)
            tile_grad.scatter_add_(2, safe, -weight)
            grad[:, :, first:last] += resize_columns_backward(
                resize_rows_backward(tile_grad, matrix), columns)
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss, _):
        grad, = ctx.saved_tensors
        return grad * grad_loss, None, None, None, None, None


def resized_cross_entropy(
        logits: torch.Tensor,
        labels: torch.Tensor,
        class_weight: Optional[torch.Tensor] = None,
        ignore_index: int = 255,
        align_corners: bool = False,
        tile_elements: Optional[int] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of ``logits`` resized (bilinear) to the label size.

    The same as ``F.cross_entropy(F.interpolate(logits, labels.shape[1:],
    mode='bilinear', align_corners=align_corners), labels,
    weight=class_weight, ignore_index=ignore_index, reduction='sum')``,
    computed one tile of label rows at a time, with its gradient (for
    logits that require one): no (B, K, H, W) tensor is built, and backward
    only scales the gradient.

    Args:
        logits (Tensor): (B, K, h, w).
        labels (Tensor): (B, H, W) int64 class indices or ``ignore_index``.
        class_weight (Tensor, optional): (K,) weight of each class.
        ignore_index (int): label of unlabelled pixels. Default: 255.
        align_corners (bool): as ``F.interpolate``. Default: False.
        tile_elements (int, optional): elements of one resized tile (B * K
            * rows * W), at least one row. Default: :data:`CPU_TILE_ELEMENTS`
            on the CPU, :data:`GPU_TILE_ELEMENTS` elsewhere.

    Returns:
        tuple[Tensor, Tensor]: the summed (weighted) loss of the labelled
        pixels, differentiable in ``logits``, and the number of labelled
        pixels whose label has the largest logit (int64).
    """
    if tile_elements is None:
        tile_elements = (CPU_TILE_ELEMENTS if logits.device.type == 'cpu'
                         else GPU_TILE_ELEMENTS)
    return _TiledCrossEntropy.apply(logits, labels, class_weight,
                                    ignore_index, align_corners,
                                    tile_elements)
