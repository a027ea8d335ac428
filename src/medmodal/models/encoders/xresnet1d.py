"""xresnet1d: the 1D "bag of tricks" ResNet (He et al. 2019; fastai's xresnet) that Strodthoff
et al. 2021 benchmark on PTB-XL (``xresnet1d101``: 0.925 macro-AUROC on the superclasses).

Stem of three convolutions (``stem`` widths, the first with stride 2) + max-pool; stages of
residual blocks (basic blocks for ``expansion`` 1, bottlenecks for 4), the first block of each
later stage halving the length; the shortcut of a block that downsamples average-pools before
its 1x1 convolution (the "ResNet-D" trick) and every block's last batch norm starts at zero
(each block starts as the identity); concat pooling (average + max over time) gives the
``2 x channels`` embedding. ``depth`` picks the published layer counts (18 / 34: basic;
50 / 101: bottleneck); ``layers`` + ``expansion`` set any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field, model_validator
from torch import nn

from medmodal.models.encoders.base import EncoderCapabilities, register_encoder
from medmodal.models.encoders.signal import SIGNAL, _in_channels
from medmodal.options import Strict

DEPTHS: dict[int, tuple[tuple[int, ...], int]] = {
    18: ((2, 2, 2, 2), 1),
    34: ((3, 4, 6, 3), 1),
    50: ((3, 4, 6, 3), 4),
    101: ((3, 4, 23, 3), 4),
}


def conv_bn(
    c_in: int, c_out: int, k: int, stride: int = 1, act: bool = True, zero: bool = False
) -> nn.Sequential:
    """Conv1d (no bias) + BatchNorm (weights at zero with ``zero``) + optional ReLU."""
    bn = nn.BatchNorm1d(c_out)
    nn.init.constant_(bn.weight, 0.0 if zero else 1.0)
    layers: list[nn.Module] = [
        nn.Conv1d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False),
        bn,
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class XBlock(nn.Module):
    """Residual block: ``expansion`` 1 = two k-wide convs; 4 = 1x1 -> k-wide (stride) -> 1x1."""

    def __init__(self, c_in: int, width: int, expansion: int, k: int, stride: int) -> None:
        super().__init__()
        c_out = width * expansion
        if expansion == 1:
            body = [conv_bn(c_in, width, k, stride), conv_bn(width, c_out, k, act=False, zero=True)]
        else:
            body = [
                conv_bn(c_in, width, 1),
                conv_bn(width, width, k, stride),
                conv_bn(width, c_out, 1, act=False, zero=True),
            ]
        self.body = nn.Sequential(*body)
        skip: list[nn.Module] = []
        if stride != 1:
            skip.append(nn.AvgPool1d(stride, ceil_mode=True))
        if c_in != c_out:
            skip.append(conv_bn(c_in, c_out, 1, act=False))
        self.skip = nn.Sequential(*skip)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class XResNet1d(nn.Module):
    """Stem -> stages -> concat pooling (see the module doc); ``out_dim = 2 x channels``."""

    def __init__(self, in_channels: int, o: XResNet1dOptions) -> None:
        super().__init__()
        layers, expansion = o.resolved()
        stem: list[nn.Module] = []
        c_in = in_channels
        for i, w in enumerate(o.stem):
            stem.append(conv_bn(c_in, w, o.stem_kernel, stride=2 if i == 0 else 1))
            c_in = w
        stem.append(nn.MaxPool1d(3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem)
        blocks: list[nn.Module] = []
        for i, (w, n) in enumerate(zip(o.widths, layers, strict=True)):
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(XBlock(c_in, w, expansion, o.kernel_size, stride))
                c_in = w * expansion
        self.stages = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(o.dropout)
        self.out_dim = 2 * c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.stages(self.stem(x))
        return self.dropout(torch.cat([z.mean(dim=-1), z.amax(dim=-1)], dim=1))


class XResNet1dOptions(Strict):
    """``depth`` (18 / 34 / 50 / 101) or ``layers`` (+ ``expansion``); ``widths`` per stage
    (x ``expansion`` channels out), ``kernel_size`` (5, as Strodthoff et al.), ``stem``
    widths and ``stem_kernel``, ``dropout`` on the pooled embedding."""

    depth: int | None = Field(default=None, description="18, 34, 50 or 101 (overrides layers)")
    layers: Sequence[int] = (1, 1, 1, 1)
    expansion: int = Field(default=1, description="1: basic blocks; 4: bottlenecks")
    widths: Sequence[int] = (64, 128, 256, 512)
    kernel_size: int = Field(default=5, ge=1)
    stem: Sequence[int] = (32, 32, 64)
    stem_kernel: int = Field(default=5, ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _check(self) -> XResNet1dOptions:
        if self.depth is not None and self.depth not in DEPTHS:
            raise ValueError(f"depth must be one of {sorted(DEPTHS)}, got {self.depth}")
        if self.expansion not in (1, 4):
            raise ValueError(f"expansion must be 1 or 4, got {self.expansion}")
        if self.depth is None and len(self.layers) != len(self.widths):
            raise ValueError(f"layers {list(self.layers)} and widths {list(self.widths)} differ")
        if self.depth is not None and len(self.widths) != 4:
            raise ValueError("a named depth has 4 stages: give 4 widths")
        if not self.stem:
            raise ValueError("stem needs at least one width")
        return self

    def resolved(self) -> tuple[tuple[int, ...], int]:
        """(blocks per stage, expansion) of ``depth`` or of ``layers`` / ``expansion``."""
        if self.depth is not None:
            return DEPTHS[self.depth]
        return tuple(int(n) for n in self.layers), self.expansion


# Grad-CAM weighs the last stage's output (before the pooling)
XRESNET_CAPS = EncoderCapabilities(cam_layer=lambda m: m.stages)


@register_encoder("xresnet1d", SIGNAL, capabilities=XRESNET_CAPS, options=XResNet1dOptions)
def xresnet1d(info: dict[str, Any], options: XResNet1dOptions) -> nn.Module:
    """1D xresnet (stem of 3 convs, ResNet-D shortcuts, zero-init last BN, concat pooling):
    ``depth: 101`` is Strodthoff et al.'s xresnet1d101; default: 4 stages of 1 basic block."""
    return XResNet1d(_in_channels(info), options)
