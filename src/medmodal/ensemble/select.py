"""Greedy ensemble selection with replacement (Caruana et al., ICML 2004; AutoGluon's weighted
ensemble), on held-out predictions only.

Start from nothing; at each of ``rounds`` steps add the member (possibly again) whose addition
gives the best held-out score of the averaged predictions; keep the shortest prefix of steps
that reached the best score; a member's weight is its share of that prefix. The function sees
the predictions and labels it is given and nothing else: the caller hands it validation (or
out-of-fold) predictions, never a test split's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

Score = Callable[[np.ndarray], float]


@dataclass
class Selection:
    """``weights`` per member (summing to 1), the score after each step (``trajectory``), the
    members picked in order and the best score."""

    weights: np.ndarray
    trajectory: list[float] = field(default_factory=list)
    picks: list[int] = field(default_factory=list)
    score: float = float("nan")


def greedy_select(preds: Sequence[np.ndarray], score: Score, rounds: int = 25) -> Selection:
    """Members' held-out predictions ``preds`` (same shape each; probabilities, or standardised
    risk scores) and ``score`` (higher is better; NaN counts as the worst) -> the selection. Ties
    go to the member listed first."""
    if not preds:
        raise ValueError("no member to select from")
    total = np.zeros_like(np.asarray(preds[0], dtype=np.float64))
    picks: list[int] = []
    trajectory: list[float] = []
    for step in range(rounds):
        best, best_m = -np.inf, 0
        for m, p in enumerate(preds):
            s = _finite(score((total + p) / (step + 1)))
            if s > best:
                best, best_m = s, m
        total += preds[best_m]
        picks.append(best_m)
        trajectory.append(best)
    keep = int(np.argmax(trajectory)) + 1  # the first step that reached the best score
    counts = np.bincount(picks[:keep], minlength=len(preds)).astype(np.float64)
    return Selection(counts / counts.sum(), trajectory, picks, trajectory[keep - 1])


def _finite(s: float) -> float:
    return -np.inf if s is None or not np.isfinite(s) else float(s)
