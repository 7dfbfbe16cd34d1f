from typing import Sequence

import torch
import torch.nn.functional as F


def resample_abs_pos_embed(pos_embed: torch.Tensor,
                           new_size: Sequence[int],
                           old_size: Sequence[int],
                           num_prefix_tokens: int = 1,
                           mode: str = 'bicubic') -> torch.Tensor:
    """Resize the grid part of an absolute position embedding.

    Args:
        pos_embed (Tensor): (1, num_prefix_tokens + H*W, C).
        new_size (Sequence[int]): target grid (h, w).
        old_size (Sequence[int]): grid (H, W) that ``pos_embed`` was learned on.
        num_prefix_tokens (int): leading cls/dist entries, kept unchanged.
        mode (str): interpolation mode of ``F.interpolate``.

    Returns:
        Tensor: (1, num_prefix_tokens + h*w, C).
    """
    new_size, old_size = tuple(new_size), tuple(old_size)
    num_grid = pos_embed.shape[1] - num_prefix_tokens
    if num_grid != old_size[0] * old_size[1]:
        raise ValueError(
            f'pos_embed has {num_grid} grid entries after '
            f'{num_prefix_tokens} prefix tokens, which does not match the '
            f'grid {old_size[0]}x{old_size[1]}')
    if new_size == old_size:
        return pos_embed
    prefix, grid = pos_embed.split([num_prefix_tokens, num_grid], dim=1)
    dtype = grid.dtype
    # Half precision interpolation is inaccurate (and unsupported on CPU);
    # float32/float64 keep their precision.
    if dtype in (torch.float16, torch.bfloat16):
        grid = grid.float()
    grid = grid.reshape(1, *old_size, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new_size, mode=mode, align_corners=False)
    grid = grid.flatten(2).transpose(1, 2).to(dtype)
    return torch.cat([prefix, grid], dim=1)
