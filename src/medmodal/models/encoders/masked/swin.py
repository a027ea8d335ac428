"""SimMIM for medmodal's ``swin`` encoder (MONAI Swin transformer, 2D or 3D), as in Xie et al.
(CVPR 2022).

The patch embeddings of hidden patches (after the patch embedding and its norm, before MONAI's
``pos_drop``) are replaced by one learned mask token, so a hidden patch's pixels never reach the
stages: every later token is computed from visible pixels and mask tokens only. The stages run as
in the encoder; the last stage's feature map, after the encoder's final LayerNorm, is decoded by
SimMIM's light decoder: a 1x1 convolution to ``channels * stride**d`` values per position and a
pixel shuffle to the full image (``stride`` = the encoder's total stride), also in 3D.
"""

from __future__ import annotations

import torch
from torch import nn

from medmodal.models.encoders.masked.pixels import to_pixels, unpatchify


class SwinSimMIM(nn.Module):
    """``forward(x, mask) -> reconstruction``; ``mask`` is (B, *patch grid), True = hidden, on the
    grid of the Swin's patch embeddings. ``self.encoder`` is the medmodal encoder module whose
    state dict the checkpoint keeps (names unchanged)."""

    def __init__(self, encoder: nn.Module, channels: int, dims: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.channels, self.dims, self.stride = channels, dims, int(encoder.stride)
        width = int(encoder.swin.embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, width, *([1] * dims)))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        # a 1x1 convolution on the feature map = a linear map of each last-stage token
        self.decoder = nn.Linear(encoder.out_dim, channels * self.stride**dims)

    @property
    def model_patch(self) -> int:
        return int(self.encoder.patch)

    def embed(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim, *patch grid) patch embeddings, the hidden ones replaced by the token."""
        t = self.encoder.swin.patch_embed(x)
        return torch.where(mask.unsqueeze(1), self.mask_token.to(t.dtype), t)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        features = self.encoder.stages(self.embed(x, mask))
        pixels = self.decoder(self.encoder.tokens(features))
        return unpatchify(pixels, tuple(features.shape[2:]), self.stride, self.channels)

    def hidden_pixels(self, mask: torch.Tensor) -> torch.Tensor:
        return to_pixels(mask, self.model_patch)
