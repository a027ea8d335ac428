"""Biosignal encoders over (B, C, L) inputs (ECG leads x samples).

``info`` comes from the signal processor: ``in_channels``, ``length``, ``fs``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medmodal.models.encoders.base import EncoderCapabilities, register_encoder

SIGNAL = ("signal",)


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv1d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm1d(c_out),
    ]


class BasicBlock1d(nn.Module):
    """Two k-wide convolutions with a residual connection (1x1 projection when shapes change)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(c_in, c_out, kernel_size, stride),
            nn.ReLU(inplace=True),
            *_conv_bn(c_out, c_out, kernel_size),
        )
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(*_conv_bn(c_in, c_out, 1, stride))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class ResNet1d(nn.Module):
    """Stem (conv k=``stem_kernel``, stride 2, max-pool) -> stages of basic blocks
    (the first stage keeps the length, later ones halve it) -> global average pool."""

    def __init__(
        self,
        in_channels: int,
        widths: Sequence[int] = (32, 64, 128, 256),
        blocks: Sequence[int] = (2, 2, 2, 2),
        kernel_size: int = 7,
        stem_kernel: int = 7,
        dropout: float = 0.0,
        proj_dim: int | None = None,
    ) -> None:
        super().__init__()
        if len(widths) != len(blocks):
            raise ValueError(
                f"resnet1d: widths {list(widths)} and blocks {list(blocks)} differ in length"
            )
        self.stem = nn.Sequential(
            *_conv_bn(in_channels, widths[0], stem_kernel, stride=2),
            nn.ReLU(inplace=True),
            nn.MaxPool1d(3, stride=2, padding=1),
        )
        stages: list[nn.Module] = []
        c_in = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                stages.append(BasicBlock1d(c_in, w, kernel_size, stride))
                c_in = w
        self.stages = nn.Sequential(*stages)
        self.dropout = nn.Dropout(dropout)
        self.proj = (
            nn.Sequential(nn.Linear(c_in, proj_dim), nn.ReLU()) if proj_dim else nn.Identity()
        )
        self.out_dim = int(proj_dim or c_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.stages(self.stem(x)).mean(dim=-1)
        return self.proj(self.dropout(z))


class CNN1d(nn.Module):
    """Small and fast: Conv-BN-ReLU-MaxPool(2) blocks -> global average + max pooling."""

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int] = (32, 64, 128),
        kernel_size: int = 7,
        dropout: float = 0.1,
        proj_dim: int | None = None,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c in channels:
            layers += [*_conv_bn(c_in, c, kernel_size), nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool1d(2, ceil_mode=True))
            c_in = c
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.proj = (
            nn.Sequential(nn.Linear(2 * c_in, proj_dim), nn.ReLU()) if proj_dim else nn.Identity()
        )
        self.out_dim = int(proj_dim or 2 * c_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.features(x)
        return self.proj(self.dropout(torch.cat([z.mean(dim=-1), z.amax(dim=-1)], dim=1)))


def _in_channels(info: dict[str, Any]) -> int:
    c = info.get("in_channels")
    if not c:
        raise ValueError(
            "signal encoder needs info['in_channels'] (fit the signal processor first)"
        )
    return int(c)


@register_encoder(
    "resnet1d", SIGNAL, default=True, capabilities=EncoderCapabilities(cam_layer=lambda m: m.stages)
)
def resnet1d(
    info: dict[str, Any],
    widths: Sequence[int] = (32, 64, 128, 256),
    blocks: Sequence[int] = (2, 2, 2, 2),
    kernel_size: int = 7,
    stem_kernel: int = 7,
    dropout: float = 0.0,
    proj_dim: int | None = None,
) -> nn.Module:
    """1D ResNet (4 stages of basic blocks, widths 32-64-128-256, k=7, average pooled)."""
    return ResNet1d(_in_channels(info), widths, blocks, kernel_size, stem_kernel, dropout, proj_dim)


# Grad-CAM weighs the last block's ReLU (before its pooling)
CNN1D_CAPS = EncoderCapabilities(cam_layer=lambda m: m.features[-2])


@register_encoder("cnn1d", SIGNAL, capabilities=CNN1D_CAPS)
def cnn1d(
    info: dict[str, Any],
    channels: Sequence[int] = (32, 64, 128),
    kernel_size: int = 7,
    dropout: float = 0.1,
    proj_dim: int | None = None,
) -> nn.Module:
    """Small 1D CNN (3 conv blocks 32-64-128, avg+max pooled, 256-wide): fast baseline."""
    return CNN1d(_in_channels(info), channels, kernel_size, dropout, proj_dim)
