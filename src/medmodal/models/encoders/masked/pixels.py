"""Masks and patches as pixels, shared by the masked-image paths."""

from __future__ import annotations

import torch


def to_pixels(mask: torch.Tensor, patch: int) -> torch.Tensor:
    """A (B, *token_grid) mask as (B, 1, *size) float pixels (1 = hidden), ``patch`` px per token."""
    out = mask
    for axis in range(1, mask.ndim):
        out = out.repeat_interleave(patch, dim=axis)
    return out.unsqueeze(1).float()


def unpatchify(x: torch.Tensor, grid: tuple[int, ...], patch: int, channels: int) -> torch.Tensor:
    """(B, prod(grid), channels * patch**d) -> (B, channels, *(grid * patch)) (pixel shuffle)."""
    b, d = x.shape[0], len(grid)
    x = x.reshape(b, *grid, channels, *([patch] * d))
    # (B, g1..gd, C, p1..pd) -> (B, C, g1, p1, ..., gd, pd)
    order = [0, d + 1] + [i for k in range(d) for i in (1 + k, d + 2 + k)]
    x = x.permute(*order)
    return x.reshape(b, channels, *(g * patch for g in grid))
