"""Image encoders (2D and 3D) built on MONAI's networks.

``info`` comes from the image processor: ``in_channels``, ``spatial_dims`` and
``size`` (the fixed input size after resizing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from monai.networks import nets
from monai.networks.nets.swin_unetr import SwinTransformer
from torch import nn

from medmodal.models.encoders.base import register_encoder

IMAGE = ("image",)


def _dims(info: dict[str, Any]) -> tuple[int, int, tuple[int, ...]]:
    size = tuple(int(s) for s in info.get("size", (28, 28)))
    return int(info.get("in_channels", 1)), int(info.get("spatial_dims", len(size))), size


class BaselineCNN(nn.Module):
    """The classic Keras example: Conv(32, 3x3)+ReLU -> MaxPool(2) -> Flatten -> Dense(hidden)+ReLU.

    The final Dense(classes) is the model's head. Its Dense layer is sized at
    construction from the fixed input size (never inside ``forward``).
    """

    def __init__(
        self, in_channels: int, size: tuple[int, ...], hidden: int = 128, filters: int = 32
    ) -> None:
        super().__init__()
        dims = len(size)
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        pool = nn.MaxPool2d if dims == 2 else nn.MaxPool3d
        self.features = nn.Sequential(
            conv(in_channels, filters, 3), nn.ReLU(), pool(2), nn.Flatten()
        )
        flat = filters * math.prod((s - 2) // 2 for s in size)
        self.fc = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU())
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


@register_encoder("baseline_cnn", IMAGE)
def baseline_cnn(info: dict[str, Any], hidden: int = 128, filters: int = 32) -> nn.Module:
    """Seed-style CNN: one conv layer, max-pool, dense (the classic Keras example)."""
    c, _, size = _dims(info)
    return BaselineCNN(c, size, hidden=hidden, filters=filters)


class _Features(nn.Module):
    """Wrap a MONAI classifier body so it returns pooled features of width ``out_dim``."""

    def __init__(self, body: nn.Module, out_dim: int) -> None:
        super().__init__()
        self.body = body
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _resnet(
    info: dict[str, Any], block: str, layers: list[int], small_input: bool | None
) -> nn.Module:
    c, sd, size = _dims(info)
    small = min(size) <= 64 if small_input is None else small_input
    # Small inputs (MedMNIST 28/64 px): 3x3 stride-1 stem without max-pool, as MedMNIST's ResNet.
    body = nets.ResNet(
        block=block,
        layers=layers,
        block_inplanes=[64, 128, 256, 512],
        spatial_dims=sd,
        n_input_channels=c,
        conv1_t_size=3 if small else 7,
        conv1_t_stride=1 if small else 2,
        no_max_pool=small,
        feed_forward=False,
    )
    width = 512 * (4 if block == "bottleneck" else 1)
    return _Features(body, width)


@register_encoder("resnet18", IMAGE, default=True)
def resnet18(info: dict[str, Any], small_input: bool | None = None) -> nn.Module:
    """MONAI ResNet-18 (2D or 3D); small-input stem for images of 64 px or less."""
    return _resnet(info, "basic", [2, 2, 2, 2], small_input)


@register_encoder("resnet50", IMAGE)
def resnet50(info: dict[str, Any], small_input: bool | None = None) -> nn.Module:
    """MONAI ResNet-50 (bottleneck blocks, 2048-wide features)."""
    return _resnet(info, "bottleneck", [3, 4, 6, 3], small_input)


@register_encoder("densenet121", IMAGE)
def densenet121(info: dict[str, Any], small_input: bool | None = None) -> nn.Module:
    """MONAI DenseNet-121; the classifier's last Linear is removed (1024-wide features).

    Small inputs (64 px or less) get a 3x3 stride-1 stem without max-pool, so the three
    transition layers do not shrink a 28-px image to nothing.
    """
    c, sd, size = _dims(info)
    net = nets.DenseNet121(spatial_dims=sd, in_channels=c, out_channels=1)
    if (min(size) <= 64) if small_input is None else small_input:
        conv = nn.Conv2d if sd == 2 else nn.Conv3d
        net.features.conv0 = conv(
            c, net.features.conv0.out_channels, 3, stride=1, padding=1, bias=False
        )
        net.features.pool0 = nn.Identity()
    width = net.class_layers.out.in_features
    net.class_layers.out = nn.Identity()
    return _Features(net, width)


class _ViTFeatures(nn.Module):
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


@register_encoder("vit", IMAGE)
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
    c, sd, size = _dims(info)
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
    for (
        block
    ) in net.blocks:  # MONAI builds a cross-attention norm even when unused: drop dead weights
        if not getattr(block, "with_cross_attention", False) and hasattr(block, "norm_cross_attn"):
            block.norm_cross_attn = nn.Identity()
    return _ViTFeatures(net, hidden_size)


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


def _check_swin(
    size: tuple[int, ...],
    patch_size: int,
    embed_dim: int,
    depths: Sequence[int],
    num_heads: Sequence[int],
    window_size: int,
) -> int:
    """ValueError naming the option for a Swin geometry that does not fit; returns the stride."""
    positive = {"patch_size": patch_size, "embed_dim": embed_dim, "window_size": window_size}
    for key, value in positive.items():
        if value < 1:
            raise ValueError(f"{key} must be at least 1, got {value}")
    if not 1 <= len(depths) <= 4 or min(depths) < 1:
        raise ValueError(f"depths {list(depths)} must list 1 to 4 stages of at least one block")
    if len(num_heads) != len(depths):
        raise ValueError(
            f"num_heads {list(num_heads)} needs one entry per stage: depths {list(depths)} has "
            f"{len(depths)}"
        )
    for i, heads in enumerate(num_heads):
        if heads < 1 or (embed_dim * 2**i) % heads:
            raise ValueError(
                f"num_heads[{i}] = {heads} must divide stage {i + 1}'s width "
                f"embed_dim * 2**{i} = {embed_dim * 2**i}"
            )
    stride = patch_size * 2 ** (len(depths) - 1)
    if any(s % stride for s in size):
        raise ValueError(
            f"patch_size {patch_size} x 2**(stages - 1) = {stride} must divide the image size "
            f"{list(size)} (change patch_size, depths or preprocess.size)"
        )
    return stride


@register_encoder("swin", IMAGE)
def swin(
    info: dict[str, Any],
    patch_size: int = 2,
    embed_dim: int = 48,
    depths: Sequence[int] = (2, 2),
    num_heads: Sequence[int] = (3, 6),
    window_size: int = 7,
    mlp_ratio: float = 4.0,
    dropout: float = 0.0,
    drop_path: float = 0.0,
    patch_norm: bool = True,
) -> nn.Module:
    """MONAI Swin transformer (2 stages, width 48-96, patch 2, window 7); mean-pooled last stage.

    ``depths``/``num_heads``: blocks and heads per stage (1-4 stages, the width doubles per
    stage); the image size must be a multiple of ``patch_size * 2**(stages - 1)`` (28 and 64 px
    fit the default). Windows larger than a stage's grid shrink to it; others are padded.
    """
    c, sd, size = _dims(info)
    stride = _check_swin(size, patch_size, embed_dim, depths, num_heads, window_size)
    for key, rate in {"dropout": dropout, "drop_path": drop_path}.items():
        if not 0 <= rate < 1:
            raise ValueError(f"{key} must lie in [0, 1), got {rate}")
    if mlp_ratio <= 0:
        raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}")
    net = SwinTransformer(
        in_chans=c,
        embed_dim=embed_dim,
        window_size=(window_size,) * sd,
        patch_size=(patch_size,) * sd,
        depths=tuple(depths),
        num_heads=tuple(num_heads),
        mlp_ratio=mlp_ratio,
        drop_rate=dropout,
        drop_path_rate=drop_path,
        patch_norm=patch_norm,
        spatial_dims=sd,
    )
    getattr(net, f"layers{len(depths)}")[0].downsample = None  # no merge after the last stage
    return SwinFeatures(net, stride)
