"""Validation scores an ensemble is chosen by (higher is better), on averaged member views."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from medmodal.errors import ConfigError
from medmodal.evaluate._core import fast_auroc
from medmodal.evaluate.survival import harrell_weighted

EPS = 1e-6


def metric_for(metric: str, task: str) -> str:
    """The metric ``auto`` means for ``task`` (AUROC; survival: Harrell's C), checked."""
    if metric == "auto":
        return "c_index" if task == "survival" else "auroc"
    if (metric == "c_index") != (task == "survival"):
        raise ConfigError(
            f"model.ensemble.metric: {metric} does not fit a {task} target "
            f"({'c_index' if task == 'survival' else 'auroc, log_loss, accuracy, ...'})"
        )
    return metric


def scorer(metric: str, task: str, y: np.ndarray) -> Callable[[np.ndarray], float]:
    """``score(view)`` for the validation labels ``y``."""
    y = np.asarray(y)
    if task == "survival":
        t, e = y[:, 0].astype(float), y[:, 1].astype(bool)
        return lambda r: float(harrell_weighted(t, e, r[:, 0], np.ones((1, len(t))))[0])
    return {
        "auroc": lambda p: _auroc(y, p, task),
        "log_loss": lambda p: -_log_loss(y, p, task),
        "accuracy": lambda p: float((_decide(p, task) == y).mean()),
        "balanced_accuracy": lambda p: _balanced(y, _decide(p, task), task),
        "f1_macro": lambda p: _f1(y, _decide(p, task), task),
    }[metric]


def _columns(y: np.ndarray, p: np.ndarray, task: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(is positive, score) per class (binary: the positive class only)."""
    if task == "binary":
        return [(y.astype(int) == 1, p.reshape(-1))]
    if task == "multiclass":
        return [(y == k, p[:, k]) for k in range(p.shape[1])]
    return [(y[:, k] == 1, p[:, k]) for k in range(p.shape[1])]


def _auroc(y: np.ndarray, p: np.ndarray, task: str) -> float:
    vals = [
        fast_auroc(pos.astype(int), s)
        for pos, s in _columns(y, p, task)
        if 0 < pos.sum() < len(pos)
    ]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else float("nan")


def _log_loss(y: np.ndarray, p: np.ndarray, task: str) -> float:
    if task == "multiclass":
        return float(-np.log(np.clip(p[np.arange(len(y)), y.astype(int)], EPS, 1)).mean())
    q = np.clip(p.reshape(y.shape), EPS, 1 - EPS)
    return float(-(y * np.log(q) + (1 - y) * np.log(1 - q)).mean())


def _decide(p: np.ndarray, task: str) -> np.ndarray:
    if task == "multiclass":
        return p.argmax(1)
    return (p > 0.5).astype(int).reshape(-1) if task == "binary" else (p > 0.5).astype(int)


def _balanced(y: np.ndarray, pred: np.ndarray, task: str) -> float:
    if task == "multilabel":
        return float(np.mean([(_recall(y[:, k], pred[:, k], 1) + _recall(y[:, k], pred[:, k], 0)) / 2
                              for k in range(y.shape[1])]))  # fmt: skip
    return float(np.mean([_recall(y, pred, c) for c in np.unique(y)]))


def _recall(y: np.ndarray, pred: np.ndarray, c: int) -> float:
    m = y == c
    return float((pred[m] == c).mean()) if m.any() else float("nan")


def _f1(y: np.ndarray, pred: np.ndarray, task: str) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y.astype(int), pred, average="macro", zero_division=0))
