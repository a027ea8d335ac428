"""The ViT image encoder (MONAI's ViT, 2D or 3D): mean-pooled patch tokens.

Its registration declares what it offers: the attention maps attention rollout multiplies and
the SimMIM masked-image path (:mod:`.masked.vit`); no convolutional block for Grad-CAM.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from monai.networks import nets
from torch import nn

from medmodal.models.encoders.base import (
    EncoderCapabilities,
    MaskedPath,
    MaskedSpec,
    register_encoder,
)
from medmodal.models.encoders.image import IMAGE, image_dims
from medmodal.models.encoders.masked.vit import ViTSimMIM, vit_patch


class ViTFeatures(nn.Module):
    """A MONAI ViT whose patch tokens are mean-pooled and layer-normalised (``out_dim`` wide)."""

    def __init__(self, vit: nn.Module, hidden: int) -> None:
        super().__init__()
        self.vit = vit
        self.norm = nn.LayerNorm(hidden)
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.vit(x)
        return self.norm(tokens.mean(dim=1))

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, hidden) patch tokens, for masked-image pretraining and explanations."""
        tokens, _ = self.vit(x)
        return tokens

    @contextmanager
    def recording_attention(self) -> Iterator[list[torch.Tensor]]:
        """Within the block, each forward appends every transformer block's (B, heads, N, N)
        attention (detached) to the list it yields, in block order."""
        blocks = [b.attn for b in self.vit.blocks]
        maps: list[torch.Tensor] = []
        hooks = [a.register_forward_hook(lambda m, _i, _o: maps.append(m.att_mat)) for a in blocks]
        for attn in blocks:
            attn.save_attn = True
        try:
            yield maps
        finally:
            for attn, hook in zip(blocks, hooks, strict=True):
                attn.save_attn = False
                hook.remove()


def _simmim(encoder: nn.Module, spec: MaskedSpec) -> nn.Module:
    return ViTSimMIM(encoder, spec.channels, vit_patch(encoder), spec.dims)


VIT_CAPS = EncoderCapabilities(
    attention=ViTFeatures.recording_attention,
    masked_path=MaskedPath(
        _simmim,
        "SimMIM: learned mask token on the patch embeddings, linear + pixel-shuffle decoder",
        patch_option="patch_size",
    ),
    notes={"cam_layer": "no convolutional block: use attention_rollout"},
)


@register_encoder("vit", IMAGE, capabilities=VIT_CAPS)
def vit(
    info: dict[str, Any],
    patch_size: int = 4,
    hidden_size: int = 192,
    mlp_dim: int = 768,
    num_layers: int = 6,
    num_heads: int = 3,
    dropout: float = 0.0,
) -> nn.Module:
    """MONAI ViT (default ViT-Tiny width); mean-pooled patch tokens."""
    c, sd, size = image_dims(info)
    net = nets.ViT(
        in_channels=c,
        img_size=size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        mlp_dim=mlp_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        dropout_rate=dropout,
        spatial_dims=sd,
        classification=False,
    )
    # MONAI builds a cross-attention norm even when unused: drop its dead weights (the
    # attributes are probed: MONAI versions before cross-attention lack them)
    for block in net.blocks:
        if not getattr(block, "with_cross_attention", False) and hasattr(block, "norm_cross_attn"):
            block.norm_cross_attn = nn.Identity()
    return ViTFeatures(net, hidden_size)
