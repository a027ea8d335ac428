"""inception1d: the InceptionTime network (Ismail Fawaz et al. 2020) as Strodthoff et al. 2021
benchmark it on PTB-XL (``inception1d``: 0.921 macro-AUROC on the superclasses).

Each block: a 1x1 bottleneck, three convolutions of it with kernels ``kernel_size - 1``,
``kernel_size // 2 - 1`` and ``kernel_size // 4 - 1`` (39 / 19 / 9 for the default 40) and a
max-pool -> 1x1 branch of the input, concatenated (``4 x filters`` channels), batch norm, ReLU.
``depth`` blocks, with a residual shortcut (1x1 conv + batch norm) around every 3; concat
pooling (average + max over time) gives the ``8 x filters`` embedding. The length never
shrinks, so it costs more per sample than the ResNets at the same width.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from medmodal.models.encoders.base import EncoderCapabilities, register_encoder
from medmodal.models.encoders.signal import SIGNAL, _in_channels
from medmodal.options import Strict


class InceptionBlock(nn.Module):
    """Bottleneck -> 3 parallel convolutions + a max-pool branch -> concat -> BN -> ReLU."""

    def __init__(self, c_in: int, filters: int, kernels: tuple[int, ...], bottleneck: int) -> None:
        super().__init__()
        width = bottleneck if bottleneck > 0 else c_in
        self.bottleneck = nn.Conv1d(c_in, width, 1, bias=False) if bottleneck > 0 else nn.Identity()
        self.convs = nn.ModuleList(
            nn.Conv1d(width, filters, k, padding=k // 2, bias=False) for k in kernels
        )
        self.pool = nn.Sequential(
            nn.MaxPool1d(3, stride=1, padding=1), nn.Conv1d(c_in, filters, 1, bias=False)
        )
        self.out = nn.Sequential(nn.BatchNorm1d(filters * (len(kernels) + 1)), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.bottleneck(x)
        return self.out(torch.cat([*(c(b) for c in self.convs), self.pool(x)], dim=1))


class InceptionBackbone(nn.Module):
    """``depth`` inception blocks, a residual shortcut around every ``residual_every``."""

    def __init__(self, c_in: int, o: Inception1dOptions) -> None:
        super().__init__()
        k = o.kernel_size
        kernels = tuple(max(1, s) | 1 for s in (k - 1, k // 2 - 1, k // 4 - 1))  # odd: same size
        width = 4 * o.filters
        self.blocks = nn.ModuleList()
        self.shortcuts = nn.ModuleList()
        self.every = o.residual_every
        c, start = c_in, c_in
        for d in range(o.depth):
            self.blocks.append(InceptionBlock(c, o.filters, kernels, o.bottleneck))
            c = width
            if self.every and (d + 1) % self.every == 0:
                self.shortcuts.append(
                    nn.Sequential(nn.Conv1d(start, width, 1, bias=False), nn.BatchNorm1d(width))
                )
                start = width
        self.act = nn.ReLU()
        self.out_channels = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res, s = x, 0
        for d, block in enumerate(self.blocks):
            x = block(x)
            if self.every and (d + 1) % self.every == 0:
                x = self.act(x + self.shortcuts[s](res))
                res, s = x, s + 1
        return x


class Inception1d(nn.Module):
    """Backbone (``features``) -> concat pooling -> dropout; ``out_dim = 2 x 4 x filters``."""

    def __init__(self, in_channels: int, o: Inception1dOptions) -> None:
        super().__init__()
        self.features = InceptionBackbone(in_channels, o)
        self.dropout = nn.Dropout(o.dropout)
        self.out_dim = 2 * self.features.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.features(x)
        return self.dropout(torch.cat([z.mean(dim=-1), z.amax(dim=-1)], dim=1))


class Inception1dOptions(Strict):
    """``depth`` blocks (6), ``filters`` per branch (32), ``kernel_size`` (40: 39 / 19 / 9),
    ``bottleneck`` width (32; 0 = none), a shortcut every ``residual_every`` blocks (3; 0 =
    none), ``dropout`` on the pooled embedding."""

    depth: int = Field(default=6, ge=1)
    filters: int = Field(default=32, ge=1)
    kernel_size: int = Field(default=40, ge=4)
    bottleneck: int = Field(default=32, ge=0)
    residual_every: int = Field(default=3, ge=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)


# Grad-CAM weighs the backbone's output (the last block, after its shortcut)
INCEPTION_CAPS = EncoderCapabilities(cam_layer=lambda m: m.features)


@register_encoder("inception1d", SIGNAL, capabilities=INCEPTION_CAPS, options=Inception1dOptions)
def inception1d(info: dict[str, Any], options: Inception1dOptions) -> nn.Module:
    """InceptionTime (6 blocks, 32 filters per branch, kernels 39/19/9, shortcut every 3,
    concat pooling: 256-wide), Strodthoff et al. 2021's inception1d."""
    return Inception1d(_in_channels(info), options)
