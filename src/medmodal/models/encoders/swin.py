"""The Swin transformer image encoder (MONAI's, 2D or 3D): mean-pooled last stage.

Its registration declares the SimMIM masked-image path (:mod:`.masked.swin`); its options are one
strict model (:class:`SwinOptions`, the registry's ``options=``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.nets.swin_unetr import SwinTransformer
from torch import nn

from medmodal.models.encoders.base import (
    EncoderCapabilities,
    MaskedPath,
    MaskedSpec,
    register_encoder,
)
from medmodal.models.encoders.image import IMAGE, image_dims
from medmodal.models.encoders.masked.swin import SwinSimMIM
from medmodal.options import Strict


class SwinFeatures(nn.Module):
    """MONAI's Swin transformer as an encoder: patch embedding, ``pos_drop``, the stages, a final
    LayerNorm per token, then the global average of the last stage's tokens (``out_dim`` wide).

    As in Swin (Liu et al. 2021) and SimMIM, patches are merged *between* stages: the last stage
    keeps its resolution (MONAI's SwinUNETR encoder also merges after it; that merge is removed),
    so the last feature map has stride ``patch_size * 2**(stages - 1)``. MONAI's own ``forward``
    needs four stages and returns every stage; this one runs however many there are (1-4).
    """

    def __init__(self, swin: nn.Module, stride: int) -> None:
        super().__init__()
        self.swin = swin
        self.stride = stride
        self.out_dim = int(swin.embed_dim * 2 ** (swin.num_layers - 1))
        self.norm = nn.LayerNorm(self.out_dim)

    @property
    def patch(self) -> int:
        """The side of a model patch (one patch embedding) in pixels."""
        return int(self.swin.patch_size[0])

    def stages(self, embedded: torch.Tensor) -> torch.Tensor:
        """(B, C, *grid) patch embeddings -> (B, out_dim, *grid / 2**(stages-1)) last-stage map."""
        x = self.swin.pos_drop(embedded)
        for i in range(self.swin.num_layers):
            x = getattr(self.swin, f"layers{i + 1}")[0](x.contiguous())
        return x

    def tokens(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, *grid) feature map -> (B, N, C) tokens after the final LayerNorm."""
        return self.norm(features.flatten(2).transpose(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(self.stages(self.swin.patch_embed(x))).mean(dim=1)


class SwinOptions(Strict):
    """The ``swin`` encoder's options (see :func:`swin`)."""

    patch_size: int = 2
    embed_dim: int = 48
    depths: Sequence[int] = (2, 2)
    num_heads: Sequence[int] = (3, 6)
    window_size: int = 7
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    drop_path: float = 0.0
    patch_norm: bool = True


def _check_swin(size: tuple[int, ...], o: SwinOptions) -> int:
    """ValueError naming the option for a Swin geometry that does not fit; returns the stride."""
    positive = {"patch_size": o.patch_size, "embed_dim": o.embed_dim, "window_size": o.window_size}
    for key, value in positive.items():
        if value < 1:
            raise ValueError(f"{key} must be at least 1, got {value}")
    depths, num_heads = list(o.depths), list(o.num_heads)
    if not 1 <= len(depths) <= 4 or min(depths) < 1:
        raise ValueError(f"depths {depths} must list 1 to 4 stages of at least one block")
    if len(num_heads) != len(depths):
        raise ValueError(
            f"num_heads {num_heads} needs one entry per stage: depths {depths} has {len(depths)}"
        )
    for i, heads in enumerate(num_heads):
        if heads < 1 or (o.embed_dim * 2**i) % heads:
            raise ValueError(
                f"num_heads[{i}] = {heads} must divide stage {i + 1}'s width "
                f"embed_dim * 2**{i} = {o.embed_dim * 2**i}"
            )
    stride = o.patch_size * 2 ** (len(depths) - 1)
    if any(s % stride for s in size):
        raise ValueError(
            f"patch_size {o.patch_size} x 2**(stages - 1) = {stride} must divide the image size "
            f"{list(size)} (change patch_size, depths or preprocess.size)"
        )
    for key, rate in {"dropout": o.dropout, "drop_path": o.drop_path}.items():
        if not 0 <= rate < 1:
            raise ValueError(f"{key} must lie in [0, 1), got {rate}")
    if o.mlp_ratio <= 0:
        raise ValueError(f"mlp_ratio must be positive, got {o.mlp_ratio}")
    return stride


def _simmim(encoder: nn.Module, spec: MaskedSpec) -> nn.Module:
    return SwinSimMIM(encoder, spec.channels, spec.dims)


SWIN_CAPS = EncoderCapabilities(
    masked_path=MaskedPath(
        _simmim,
        "SimMIM: learned mask token on the patch embeddings, the stages, 1x1 conv + pixel "
        "shuffle decoder of the last stage",
        patch_option="patch_size",
    ),
    notes={"cam_layer": "no convolutional block", "attention": "windowed attention"},
)


@register_encoder("swin", IMAGE, capabilities=SWIN_CAPS, options=SwinOptions)
def swin(info: dict[str, Any], options: SwinOptions) -> nn.Module:
    """MONAI Swin transformer (2 stages, width 48-96, patch 2, window 7); mean-pooled last stage.

    ``depths``/``num_heads``: blocks and heads per stage (1-4 stages, the width doubles per
    stage); the image size must be a multiple of ``patch_size * 2**(stages - 1)`` (28 and 64 px
    fit the default). Windows larger than a stage's grid shrink to it; others are padded.
    """
    c, sd, size = image_dims(info)
    o = options
    stride = _check_swin(size, o)
    net = SwinTransformer(
        in_chans=c,
        embed_dim=o.embed_dim,
        window_size=(o.window_size,) * sd,
        patch_size=(o.patch_size,) * sd,
        depths=tuple(o.depths),
        num_heads=tuple(o.num_heads),
        mlp_ratio=o.mlp_ratio,
        drop_rate=o.dropout,
        drop_path_rate=o.drop_path,
        patch_norm=o.patch_norm,
        spatial_dims=sd,
    )
    getattr(net, f"layers{len(o.depths)}")[0].downsample = None  # no merge after the last stage
    return SwinFeatures(net, stride)
