"""Calibration: expected calibration error and reliability-curve data.

Equal-width confidence bins on [0, 1] (bin ``b`` holds ``b/n <= c < (b+1)/n``; ``c = 1`` falls in
the last bin). What is calibrated depends on the task:

* binary: P(positive) against the positive outcome;
* multiclass: top-label confidence (max probability) against "argmax is correct";
* multilabel: each label's probability against that label; the ECE is the mean of the per-label
  ECEs (class-wise ECE) and the reliability curve pools all labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import sparse

from medmodal.evaluate._validate import validate_inputs
from medmodal.evaluate.decision import decide

DEFAULT_BINS = 15


def check_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return int(n_bins)


def calibration_targets(
    y_true: np.ndarray, y_prob: np.ndarray, task: str
) -> tuple[np.ndarray, np.ndarray]:
    """Confidence and 0/1 outcome arrays of shape (N, L) for validated inputs (L = 1 or K)."""
    if task == "binary":
        return y_prob[:, None], y_true[:, None].astype(np.float64)
    if task == "multiclass":
        pred = decide(y_prob, task)
        conf = y_prob[np.arange(len(pred)), pred]
        return conf[:, None], (pred == y_true).astype(np.float64)[:, None]
    return y_prob, y_true.astype(np.float64)


def bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each confidence value (same shape, ints in 0..n_bins-1)."""
    return np.clip(np.floor(conf * n_bins).astype(np.int64), 0, n_bins - 1)


def ece_matrix(conf: np.ndarray, outcome: np.ndarray, n_bins: int) -> sparse.csr_matrix:
    """Sparse (N, L * n_bins): gap ``outcome - conf`` of each sample in its bin, per column."""
    n, n_cols = conf.shape
    cols = bin_index(conf, n_bins) + np.arange(n_cols) * n_bins
    rows = np.repeat(np.arange(n), n_cols)
    gaps = (outcome - conf).ravel()
    return sparse.csr_matrix((gaps, (rows, cols.ravel())), shape=(n, n_cols * n_bins))


def weighted_ece(gaps: sparse.csr_matrix, weights: np.ndarray, n_cols: int) -> np.ndarray:
    """ECE for each weight row (B, N) from :func:`ece_matrix`, averaged over the L columns.

    ECE = sum_b |sum_{i in b} w_i (o_i - c_i)| / sum_i w_i, i.e. the bin-size-weighted mean gap
    between observed frequency and mean confidence.
    """
    per_bin = np.abs(np.asarray(gaps.T @ weights.T)).sum(axis=0)
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return per_bin / n_cols / total


def expected_calibration_error(
    y_true: Any,
    y_prob: Any,
    task: str = "binary",
    class_names: Sequence[Any] | None = None,
    n_bins: int = DEFAULT_BINS,
) -> float:
    """Expected calibration error with ``n_bins`` equal-width bins (see module docstring)."""
    yt, yp, _ = validate_inputs(y_true, y_prob, task, _default_names(y_prob, task, class_names))
    return reliability_from_validated(yt, yp, task, check_bins(n_bins))["ece"]


def reliability_curve(
    y_true: Any,
    y_prob: Any,
    task: str = "binary",
    class_names: Sequence[Any] | None = None,
    n_bins: int = DEFAULT_BINS,
) -> dict[str, Any]:
    """Per-bin data for a reliability diagram.

    Returns ``{"bin_edges": [n_bins + 1], "count": [n_bins], "mean_confidence": [n_bins],
    "observed": [n_bins], "ece": float, "n_bins": int, "kind": str}``; empty bins have
    ``None`` confidence/observed. Multilabel pools all labels for the curve.
    """
    yt, yp, _ = validate_inputs(y_true, y_prob, task, _default_names(y_prob, task, class_names))
    return reliability_from_validated(yt, yp, task, check_bins(n_bins))


def reliability_from_validated(
    y_true: np.ndarray, y_prob: np.ndarray, task: str, n_bins: int
) -> dict[str, Any]:
    """:func:`reliability_curve` for inputs already passed through ``validate_inputs``."""
    conf, outcome = calibration_targets(y_true, y_prob, task)
    gaps = ece_matrix(conf, outcome, n_bins)
    ece = float(weighted_ece(gaps, np.ones((1, conf.shape[0])), conf.shape[1])[0])
    c, o = conf.ravel(), outcome.ravel()
    bins = bin_index(c, n_bins)
    count = np.bincount(bins, minlength=n_bins)
    sum_c = np.bincount(bins, weights=c, minlength=n_bins)
    sum_o = np.bincount(bins, weights=o, minlength=n_bins)
    kinds = {"binary": "positive class", "multiclass": "top label", "multilabel": "all labels"}
    return {
        "bin_edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        "count": count.astype(int).tolist(),
        "mean_confidence": [float(s / n) if n else None for s, n in zip(sum_c, count, strict=True)],
        "observed": [float(s / n) if n else None for s, n in zip(sum_o, count, strict=True)],
        "ece": ece,
        "n_bins": n_bins,
        "kind": kinds[task],
    }


def _default_names(y_prob: Any, task: str, class_names: Sequence[Any] | None) -> list[str]:
    if class_names is not None:
        return [str(c) for c in class_names]
    if task == "binary":
        return ["0", "1"]
    shape = np.shape(y_prob)
    k = shape[1] if len(shape) == 2 else 1
    return [str(i) for i in range(k)]
