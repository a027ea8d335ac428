"""How members' outputs become one ensemble output, for selection and for prediction alike."""

from __future__ import annotations

import numpy as np
import torch

EPS = 1e-6


def member_view(
    logits: torch.Tensor, task: str, center: float = 0.0, scale: float = 1.0
) -> torch.Tensor:
    """What is averaged: probabilities (binary / multilabel: sigmoid, multiclass: softmax) or,
    for survival, the risk standardised by the member's validation ``center`` / ``scale``."""
    z = logits.double()
    if task == "survival":
        return (z[:, :1] - center) / scale
    if task == "multiclass":
        return torch.softmax(z, dim=1)
    return torch.sigmoid(z)


def to_logits(avg: torch.Tensor, task: str) -> torch.Tensor:
    """The averaged view back as logits (float32), so the Predictor treats it as any model's."""
    if task == "survival":
        return avg.float()
    p = avg.clamp(EPS, 1 - EPS)
    if task == "multiclass":
        return torch.log(p / p.sum(1, keepdim=True)).float()
    return (torch.log(p) - torch.log1p(-p)).float()


def standardiser(logits: np.ndarray) -> tuple[float, float]:
    """Center and scale of a survival member's risk scores (its validation rows)."""
    r = np.asarray(logits, dtype=np.float64)[:, 0]
    sd = float(r.std())
    return float(r.mean()), sd if sd > 1e-12 else 1.0
