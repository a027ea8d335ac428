"""SimMIM for medmodal's ``vit`` encoder (MONAI ViT, 2D or 3D), as in Xie et al. (CVPR 2022).

The patch embeddings of hidden patches are replaced by one learned mask token *before* the
position embeddings are added, so a hidden patch's pixels never reach the transformer. The
decoder is SimMIM's light one: a linear projection of every output token to its patch's pixels,
rearranged into the image (the 1x1 convolution + pixel shuffle of the paper, also in 3D).
"""

from __future__ import annotations

import torch
from torch import nn

from medmodal.models.encoders.masked.pixels import to_pixels, unpatchify


class ViTSimMIM(nn.Module):
    """``forward(x, mask) -> reconstruction``; ``self.encoder`` is the medmodal encoder module
    whose state dict the checkpoint keeps (names unchanged)."""

    def __init__(self, encoder: nn.Module, channels: int, patch: int, dims: int) -> None:
        super().__init__()
        vit = encoder.vit
        embed = vit.patch_embedding
        if embed.proj_type != "conv":
            raise ValueError("SimMIM needs the ViT's convolutional patch embedding")
        hidden = embed.position_embeddings.shape[-1]
        self.encoder = encoder
        self.patch, self.dims, self.channels = patch, dims, channels
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder = nn.Linear(hidden, channels * patch**dims)

    @property
    def model_patch(self) -> int:
        return self.patch

    def tokens(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, N, hidden) transformer outputs with hidden patches replaced by the mask token."""
        vit = self.encoder.vit
        embed = vit.patch_embedding
        t = embed.patch_embeddings(x).flatten(2).transpose(1, 2)
        w = mask.flatten(1).unsqueeze(-1).to(t.dtype)
        t = t * (1 - w) + self.mask_token.to(t.dtype) * w
        t = embed.dropout(t + embed.position_embeddings)
        for block in vit.blocks:
            t = block(t)
        return vit.norm(t)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        grid = mask.shape[1:]
        return unpatchify(self.decoder(self.tokens(x, mask)), grid, self.patch, self.channels)

    def hidden_pixels(self, mask: torch.Tensor) -> torch.Tensor:
        return to_pixels(mask, self.patch)


def vit_patch(encoder: nn.Module) -> int:
    """The ViT's patch side (a cube / square patch; MONAI takes an int ``patch_size``)."""
    k = encoder.vit.patch_embedding.patch_embeddings.kernel_size
    if len(set(k)) != 1:
        raise ValueError(f"SimMIM needs a square / cubic ViT patch, got {tuple(k)}")
    return int(k[0])
