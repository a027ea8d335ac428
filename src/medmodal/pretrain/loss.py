"""SimMIM's loss: L1 between reconstruction and image on the hidden pixels only."""

from __future__ import annotations

import torch


def masked_l1(recon: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over hidden pixels and channels (visible pixels do not count).

    ``recon``, ``target``: (B, C, *size); ``hidden``: (B, 1, *size), 1 where a pixel was hidden.
    """
    hidden = hidden.to(recon.dtype)
    per_pixel = (recon - target).abs() * hidden
    return per_pixel.sum() / (hidden.sum() * recon.shape[1]).clamp_min(1e-6)
