"""Sliding-window encoding: an encoder run on every window of a long input, the window
embeddings aggregated into one (B, D) embedding.

The geometry comes from the modality's processor (``info()["windows"]``, set by its
``windows`` option: :mod:`medmodal.data.preprocess.windows`), so every path that calls the
model (validation, test, ``evaluate``, ``predict``, the service, ONNX export, explanations)
windows alike. Windows are cut along the last axis: ``starts = 0, hop, 2 hop, ...`` while a
window fits, plus one aligned to the end when the hop does not reach it, so every step is
covered. An input no longer than ``length`` (a training crop) is encoded as it is.

``mean`` of the embeddings with a linear head gives exactly the mean of the per-window
logits (the head is linear), i.e. the reference PTB-XL recipe's average over windows up to
the sigmoid; ``max`` takes each feature's maximum over the windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn


@dataclass(frozen=True)
class WindowSpec:
    """``length`` steps per window, ``hop`` steps between starts, ``aggregate`` mean | max."""

    length: int
    hop: int
    aggregate: Literal["mean", "max"] = "mean"

    @classmethod
    def from_info(cls, info: Any) -> WindowSpec | None:
        """The spec a processor's ``info()["windows"]`` describes (None when absent)."""
        w = info.get("windows") if isinstance(info, dict) else None
        if not w:
            return None
        return cls(int(w["length"]), int(w["hop"]), w.get("aggregate", "mean"))


def window_starts(total: int, length: int, hop: int) -> list[int]:
    """Start of every window over ``total`` steps (the last one aligned to the end)."""
    if total <= length:
        return [0]
    starts = list(range(0, total - length + 1, hop))
    if starts[-1] + length < total:
        starts.append(total - length)
    return starts


def split_windows(x: torch.Tensor, spec: WindowSpec) -> tuple[torch.Tensor, int]:
    """(B, ..., T) -> (B * W, ..., length) with the W windows of each row together, and W."""
    starts = window_starts(int(x.shape[-1]), spec.length, spec.hop)
    stacked = torch.stack([x[..., s : s + spec.length] for s in starts], dim=1)
    return stacked.reshape(-1, *x.shape[1:-1], spec.length), len(starts)


def aggregate(z: torch.Tensor, n_windows: int, how: str) -> torch.Tensor:
    """(B * W, D) window embeddings -> (B, D)."""
    per_row = z.reshape(-1, n_windows, z.shape[-1])
    return per_row.amax(dim=1) if how == "max" else per_row.mean(dim=1)


def encode_windows(encoder: nn.Module, x: torch.Tensor, spec: WindowSpec | None) -> torch.Tensor:
    """``encoder(x)``, over sliding windows of ``x`` when ``spec`` is set and ``x`` is longer
    than a window."""
    if spec is None or not isinstance(x, torch.Tensor) or x.shape[-1] <= spec.length:
        return encoder(x)
    windows, n = split_windows(x, spec)
    return aggregate(encoder(windows), n, spec.aggregate)


def stitch(per_window: torch.Tensor, total: int, spec: WindowSpec) -> torch.Tensor:
    """Per-window maps (B * W, K, length) -> (B, K, total): each step the mean over the
    windows covering it (Grad-CAM of a windowed encoder)."""
    starts = window_starts(total, spec.length, spec.hop)
    n = len(starts)
    maps = per_window.reshape(-1, n, *per_window.shape[1:])
    out = maps.new_zeros(maps.shape[0], maps.shape[2], total)
    count = maps.new_zeros(total)
    for i, s in enumerate(starts):
        out[..., s : s + spec.length] += maps[:, i]
        count[s : s + spec.length] += 1
    return out / count.clamp(min=1)
