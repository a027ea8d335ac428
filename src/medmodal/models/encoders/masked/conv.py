"""Masked-image pretraining for medmodal's ResNet encoders, in the spirit of SparK (Tian et al.,
ICLR 2023): hidden regions are kept empty at every stage, hidden pixels are reconstructed.

A dense convolution would smear visible pixels into hidden regions and its batch norm would count
the empty regions, so (as SparK's sparse convolution + sparse batch norm) every batch norm of the
encoder is, during the masked forward, computed over the *visible* positions only and zeroes the
hidden ones; the input's hidden pixels are zero and every stage's output is re-masked at its own
resolution (the pixel mask resized by nearest neighbour). Nothing computed at a visible position
ever depends on a hidden pixel. The decoder is a light U-Net: each stage's features are
*densified* (hidden positions filled with a learned per-stage mask token), projected to one
width, upsampled and summed from the deepest stage to the finest, then mapped to pixels.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from medmodal.models.encoders.masked.pixels import to_pixels


def visible_at(hidden: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, 1, *like's spatial size) float, 1 where visible (the pixel mask resized, nearest)."""
    if hidden.shape[2:] != like.shape[2:]:
        hidden = F.interpolate(hidden, size=like.shape[2:], mode="nearest")
    return (1 - hidden).to(like.dtype)


def sparse_batch_norm(bn: _BatchNorm, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Batch norm over the visible positions of ``x`` only (running statistics updated from them
    in training), hidden positions set to zero."""
    vis = visible_at(hidden, x)
    if bn.training:
        dims = [0, *range(2, x.ndim)]
        n = vis.sum() if vis.shape[1] == 1 else vis.sum() / vis.shape[1]
        n = n.clamp_min(2.0)
        mean = (x * vis).sum(dims) / n
        shape = (1, -1) + (1,) * (x.ndim - 2)
        var = ((x - mean.view(shape)) ** 2 * vis).sum(dims) / n
        with torch.no_grad():
            bn.num_batches_tracked += 1
            m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.mul_(1 - m).add_(m * mean.detach())
            bn.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1))
    else:
        mean, var = bn.running_mean, bn.running_var
        shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + bn.eps)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return y * vis


@contextmanager
def sparse_norms(module: nn.Module, hidden: torch.Tensor) -> Iterator[None]:
    """Within the block, every batch norm of ``module`` is :func:`sparse_batch_norm` for the
    pixel mask ``hidden`` (an instance-level ``forward``, removed again on exit)."""
    norms = [m for m in module.modules() if isinstance(m, _BatchNorm)]
    for bn in norms:
        bn.forward = lambda x, bn=bn: sparse_batch_norm(bn, x, hidden)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for bn in norms:
            del bn.forward


class ResNetSimMIM(nn.Module):
    """``forward(x, mask)`` for a MONAI ResNet body inside medmodal's encoder wrapper
    (``encoder.body``); ``mask`` is a (B, *size) pixel mask (model patch 1)."""

    def __init__(self, encoder: nn.Module, channels: int, dims: int, width: int = 64) -> None:
        super().__init__()
        body = encoder.body
        self.encoder = encoder
        self.channels, self.dims = channels, dims
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        widths = [_out_channels(layer) for layer in self._layers(body)]
        self.mask_tokens = nn.ParameterList(
            [nn.Parameter(torch.zeros(1, c, *([1] * dims))) for c in widths]
        )
        for t in self.mask_tokens:
            nn.init.trunc_normal_(t, std=0.02)
        self.project = nn.ModuleList([conv(c, width, 1) for c in widths])
        self.fuse = nn.ModuleList(
            [nn.Sequential(conv(width, width, 3, padding=1), nn.GELU()) for _ in widths]
        )
        self.head = conv(width, channels, 1)

    @property
    def model_patch(self) -> int:
        return 1

    @staticmethod
    def _layers(body: nn.Module) -> list[nn.Module]:
        return [body.layer1, body.layer2, body.layer3, body.layer4]

    def features(self, x: torch.Tensor, hidden: torch.Tensor) -> list[torch.Tensor]:
        """Each stage's output with hidden regions empty (zero), computed from visible pixels."""
        body = self.encoder.body
        x = x * visible_at(hidden, x)
        out = []
        with sparse_norms(body, hidden):
            x = body.act(body.bn1(body.conv1(x)))
            if not body.no_max_pool:
                x = body.maxpool(x)
                x = x * visible_at(hidden, x)
            for layer in self._layers(body):
                x = layer(x)
                x = x * visible_at(hidden, x)
                out.append(x)
        return out

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = to_pixels(mask, 1).to(x.dtype)
        feats = self.features(x, hidden)
        d = None
        for i in reversed(range(len(feats))):
            f = feats[i]
            h = 1 - visible_at(hidden, f)
            f = f * (1 - h) + self.mask_tokens[i] * h  # densify: hidden positions get the token
            f = self.project[i](f)
            if d is not None:
                f = f + F.interpolate(d, size=f.shape[2:], mode="nearest")
            d = self.fuse[i](f)
        assert d is not None
        if d.shape[2:] != x.shape[2:]:
            d = F.interpolate(d, size=x.shape[2:], mode="nearest")
        return self.head(d)

    def hidden_pixels(self, mask: torch.Tensor) -> torch.Tensor:
        return to_pixels(mask, 1)


def _out_channels(layer: nn.Module) -> int:
    """Output width of a ResNet stage: its last block's last batch norm (bn2, or bn3 of a
    bottleneck block; only a stage's first block has a downsample branch)."""
    last = list(layer.children())[-1]
    return int([m for m in last.modules() if isinstance(m, _BatchNorm)][-1].num_features)
