"""The one rule that turns probabilities into predicted classes, used everywhere a class is named
(metrics, the validation monitor, ``predictions.csv``, the report)."""

from __future__ import annotations

import numpy as np

from medmodal.config import EvaluateConfig

#: ``evaluate.threshold``'s default, as the config model declares it (the one place it is written)
DEFAULT_THRESHOLD: float = EvaluateConfig.model_fields["threshold"].default


def decide(probs: np.ndarray, task: str, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Predicted classes: binary (N,) 0/1, positive when ``p > threshold`` (strictly, as
    MedMNIST and scikit-learn's ``predict``); multiclass (N,) argmax; multilabel (N, K) 0/1,
    each label positive when ``p > threshold``."""
    p = np.asarray(probs, dtype=float)
    if task == "multiclass":
        return p.argmax(axis=1)
    if task in ("binary", "multilabel"):
        return (p > threshold).astype(int)
    raise ValueError(f"no class decision for a {task!r} task")
