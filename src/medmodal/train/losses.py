"""Task losses, with optional class weighting."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def class_weights(
    labels: np.ndarray, task: str, n_classes: int, power: float = 1.0
) -> torch.Tensor:
    """'balanced' weights (``power`` 1) or softened ones (``power`` 0.5: ``sqrt``):
    multiclass -> weight per class, (n / (K count_k)) ** power; binary / multilabel ->
    pos_weight per output, (negatives / positives) ** power."""
    if task == "multiclass":
        counts = np.bincount(labels.astype(int), minlength=n_classes).astype(float)
        w = (counts.sum() / (n_classes * np.maximum(counts, 1))) ** power
        return torch.tensor(w, dtype=torch.float32)
    y = labels.reshape(len(labels), -1).astype(float)
    pos = y.sum(0)
    neg = len(y) - pos
    return torch.tensor((neg / np.maximum(pos, 1)) ** power, dtype=torch.float32)


def make_loss(
    task: str, weights: torch.Tensor | None = None, label_smoothing: float = 0.0
) -> nn.Module:
    if task == "multiclass":
        return nn.CrossEntropyLoss(weight=weights, label_smoothing=label_smoothing)
    if task in ("binary", "multilabel"):
        return _BCE(weights)
    raise ValueError(f"no loss for task {task!r}")


class _BCE(nn.Module):
    """BCE-with-logits that accepts (B,) or (B, K) integer/float targets."""

    def __init__(self, pos_weight: torch.Tensor | None) -> None:
        super().__init__()
        self.register_buffer("pos_weight", pos_weight if pos_weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.float().reshape(logits.shape)
        return nn.functional.binary_cross_entropy_with_logits(
            logits, target, pos_weight=self.pos_weight
        )
