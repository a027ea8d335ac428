"""Audio encoders over (B, 1, n_features, n_frames) log-mel / MFCC inputs.

``info`` comes from the audio processor: ``in_channels``, ``n_features``, ``n_frames``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medmodal.models.encoders.base import EncoderCapabilities, register_encoder

AUDIO = ("audio",)


class AudioCNN(nn.Module):
    """Conv-BN-ReLU-MaxPool blocks, then global average + max pooling (concatenated).

    A pooling step halves an axis only while it is at least 2 long (worked out at
    construction from the input size), so short MFCC stacks keep working.
    ``out_dim`` is ``2 * channels[-1]``, or ``proj_dim`` with a Linear-ReLU projection.
    """

    def __init__(
        self,
        in_channels: int = 1,
        size: tuple[int, int] | None = None,
        channels: Sequence[int] = (16, 32, 64, 128),
        dropout: float = 0.2,
        proj_dim: int | None = None,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        h, w = size if size is not None else (2 ** len(channels), 2 ** len(channels))
        c_in = in_channels
        for c in channels:
            kh, kw = (2 if h >= 2 else 1), (2 if w >= 2 else 1)
            blocks += [
                nn.Conv2d(c_in, c, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.MaxPool2d((kh, kw)),
            ]
            h, w, c_in = h // kh, w // kw, c
        self.features = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        width = 2 * c_in
        self.proj = (
            nn.Sequential(nn.Linear(width, proj_dim), nn.ReLU()) if proj_dim else nn.Identity()
        )
        self.out_dim = int(proj_dim or width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.features(x)
        pooled = torch.cat([z.mean(dim=(-2, -1)), z.amax(dim=(-2, -1))], dim=1)
        return self.proj(self.dropout(pooled))


# Grad-CAM weighs the last block's ReLU (before its pooling)
AUDIO_CNN_CAPS = EncoderCapabilities(cam_layer=lambda m: m.features[-2])


@register_encoder("audio_cnn", AUDIO, default=True, capabilities=AUDIO_CNN_CAPS)
def audio_cnn(
    info: dict[str, Any],
    channels: Sequence[int] = (16, 32, 64, 128),
    dropout: float = 0.2,
    proj_dim: int | None = None,
) -> nn.Module:
    """2D CNN over log-mel / MFCC (4 blocks 16-32-64-128, avg+max pooling, 256-wide)."""
    size = None
    if info.get("n_features") and info.get("n_frames"):
        size = (int(info["n_features"]), int(info["n_frames"]))
    return AudioCNN(int(info.get("in_channels", 1)), size, channels, dropout, proj_dim)
