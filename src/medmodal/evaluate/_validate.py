"""Input checks shared by metrics, calibration, bootstrap and report.

Every check raises :class:`ValueError` with a message that says what was expected and what was
received, so a wrong shape or a stray NaN is caught before any metric is computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

TASKS = ("binary", "multiclass", "multilabel")
ROW_SUM_TOL = 1e-3  # multiclass probability rows must sum to 1 within this tolerance
PROB_TOL = 1e-6  # probabilities this far outside [0, 1] (float noise) are clipped, beyond: error


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    return task


def check_class_names(class_names: Sequence[Any], task: str) -> list[str]:
    """Class (or label) names as strings; binary needs exactly two (index 1 = positive)."""
    if isinstance(class_names, str) or class_names is None:
        raise ValueError(f"class_names must be a list of names, got {class_names!r}")
    names = [str(c) for c in class_names]
    if not names:
        raise ValueError("class_names is empty")
    if task == "binary" and len(names) != 2:
        raise ValueError(
            f"a binary task needs exactly 2 class_names [negative, positive], got {names}"
        )
    if task == "multiclass" and len(names) < 2:
        raise ValueError(f"a multiclass task needs at least 2 class_names, got {names}")
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        raise ValueError(f"class_names contains duplicates: {dupes}")
    return names


def check_threshold(threshold: float) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}") from None
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    return t


def _as_float(arr: Any, what: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype == bool:
        a = a.astype(np.float64)
    if a.dtype.kind not in "iuf":
        raise ValueError(f"{what} must be numeric, got dtype {a.dtype}")
    return a.astype(np.float64, copy=False)


def _check_probs(p: np.ndarray) -> np.ndarray:
    bad = ~np.isfinite(p)
    if bad.any():
        first = np.argwhere(bad)[0].tolist()
        raise ValueError(
            f"y_prob contains {int(bad.sum())} NaN/inf value(s) (first at index {first})"
        )
    lo, hi = float(p.min()), float(p.max())
    if lo < -PROB_TOL or hi > 1 + PROB_TOL:
        raise ValueError(
            f"y_prob must be probabilities in [0, 1], got values in [{lo:.6g}, {hi:.6g}] "
            "(pass sigmoid/softmax outputs, not logits)"
        )
    return np.clip(p, 0.0, 1.0)


def _as_labels(y: Any, names: list[str]) -> np.ndarray:
    """Class indices (N,) from ints, bools, integral floats or the class names themselves."""
    a = np.asarray(y)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"y_true must be 1-D class indices of shape (N,), got shape {a.shape}")
    if a.dtype.kind in "USO":
        lookup = {n: i for i, n in enumerate(names)}
        unknown = sorted({str(v) for v in a.tolist()} - set(lookup))
        if unknown:
            raise ValueError(
                f"y_true contains labels {unknown[:5]} that are not class indices or class_names"
            )
        return np.array([lookup[str(v)] for v in a.tolist()], dtype=np.int64)
    a = _as_float(a, "y_true")
    _check_integral(a)
    k = len(names)
    if a.min() < 0 or a.max() > k - 1:
        raise ValueError(
            f"y_true must hold class indices in 0..{k - 1} for class_names {names}, "
            f"got values in [{a.min():g}, {a.max():g}]"
        )
    return a.astype(np.int64)


def _check_integral(a: np.ndarray) -> None:
    if not np.isfinite(a).all():
        raise ValueError(f"y_true contains {int((~np.isfinite(a)).sum())} NaN/inf value(s)")
    if not np.array_equal(a, np.round(a)):
        raise ValueError("y_true must hold integer labels, got non-integer values")


def _check_rows(yp: np.ndarray, n_true: int) -> int:
    if yp.ndim == 0:
        raise ValueError("y_prob must be an array, got a scalar")
    n = yp.shape[0]
    if n != n_true:
        raise ValueError(f"y_true has {n_true} samples but y_prob has {n} (lengths must match)")
    if n == 0:
        raise ValueError("no samples: y_true and y_prob are empty")
    return n


def _binary(yt: Any, yp: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    if yp.ndim == 2 and yp.shape[1] == 1:
        yp = yp[:, 0]
    elif yp.ndim == 2 and yp.shape[1] == 2:
        if not np.allclose(yp.sum(axis=1), 1.0, atol=ROW_SUM_TOL):
            raise ValueError(
                "binary y_prob of shape (N, 2) must have rows summing to 1; "
                "pass P(positive) of shape (N,) instead"
            )
        yp = yp[:, 1]
    elif yp.ndim != 1:
        raise ValueError(
            f"binary y_prob must have shape (N,) = P({names[1]!r}), got shape {yp.shape}"
        )
    return _as_labels(yt, names), yp


def _multiclass(yt: Any, yp: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    k = len(names)
    if yp.ndim != 2 or yp.shape[1] != k:
        raise ValueError(
            f"multiclass y_prob must have shape (N, {k}) for {k} class_names, got {yp.shape}"
        )
    sums = yp.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > ROW_SUM_TOL)
    if bad.size:
        raise ValueError(
            f"multiclass y_prob rows must sum to 1 (softmax); {bad.size} row(s) do not, "
            f"e.g. row {int(bad[0])} sums to {sums[bad[0]]:.6g}"
        )
    return _as_labels(yt, names), yp


def _multilabel(yt: Any, yp: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    k = len(names)
    if yp.ndim == 1 and k == 1:
        yp = yp[:, None]
    if yp.ndim != 2 or yp.shape[1] != k:
        raise ValueError(
            f"multilabel y_prob must have shape (N, {k}) for {k} label names, got {yp.shape}"
        )
    a = _as_float(yt, "y_true")
    if a.ndim == 1 and k == 1:
        a = a[:, None]
    if a.shape != yp.shape:
        raise ValueError(f"multilabel y_true must have shape {yp.shape}, got {a.shape}")
    _check_integral(a)
    if not np.isin(a, (0.0, 1.0)).all():
        raise ValueError("multilabel y_true must hold only 0/1 values")
    return a.astype(np.int64), yp


def validate_inputs(
    y_true: Any, y_prob: Any, task: str, class_names: Sequence[Any]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Check and normalise inputs; returns ``(y_true, y_prob, class_names)``.

    binary: y_true (N,) in {0, 1}, y_prob (N,) = P(class_names[1]) (an (N, 2) softmax is also
    accepted). multiclass: y_true (N,) indices, y_prob (N, K) rows summing to 1. multilabel:
    both (N, K), y_true 0/1. Raises ValueError on any mismatch.
    """
    check_task(task)
    names = check_class_names(class_names, task)
    yt_arr = np.asarray(y_true)
    if yt_arr.ndim == 0:
        raise ValueError("y_true must be an array, got a scalar")
    yp = _as_float(y_prob, "y_prob")
    _check_rows(yp, yt_arr.shape[0])
    yp = _check_probs(yp)
    if task == "binary":
        yt, yp = _binary(yt_arr, yp, names)
    elif task == "multiclass":
        yt, yp = _multiclass(yt_arr, yp, names)
    else:
        yt, yp = _multilabel(yt_arr, yp, names)
    return yt, yp, names
