"""Bootstrap resampling shared by the classification and the survival bootstrap (and the what-if
effects): draw counts of one chunk of resamples, clustered by patient, the checks of the CI
options, and the summary of a paired delta.

A resample is a vector of counts (how often each sample was drawn). With ``groups`` the whole
group (patient) is drawn with replacement, all its rows together (clustered bootstrap).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["check_ci", "delta_summary", "group_index", "percentile_ci", "resample_weights"]


def resample_weights(
    rng: np.random.Generator, n_rows: int, size: int, groups: tuple[np.ndarray, int] | None
) -> np.ndarray:
    """(size, N) draw counts of one bootstrap chunk; clustered when ``groups`` is given.

    ``groups`` is ``(index, n_groups)``: each sample's group index and the number of groups;
    the ``n_groups`` groups are drawn with replacement and each row inherits its group's count.
    """
    n_units = n_rows if groups is None else groups[1]
    draws = rng.integers(0, n_units, size=(size, n_units))
    counts = np.empty((size, n_units))
    for row, d in zip(counts, draws, strict=True):  # row-wise bincount: cache friendly
        row[:] = np.bincount(d, minlength=n_units)
    return counts if groups is None else counts[:, groups[0]]


def group_index(groups: Sequence[Any] | None, n: int) -> tuple[np.ndarray, int] | None:
    """``(index, n_groups)`` of each sample's group (None without groups); ValueError for a
    wrong length or a missing id."""
    if groups is None:
        return None
    arr = np.asarray(groups, dtype=object)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"groups must have one entry per sample ({n}), got shape {arr.shape}")
    codes, uniques = pd.factorize(arr)
    if (codes < 0).any():
        raise ValueError(f"groups contains {int((codes < 0).sum())} missing (None/NaN) ids")
    return codes.astype(np.int64), len(uniques)


def check_ci(ci: float, n_boot: int) -> None:
    if not 0.0 < float(ci) < 1.0:
        raise ValueError(f"ci must be in (0, 1), e.g. 0.95; got {ci!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")


def percentile_ci(
    value: float | None, boots: np.ndarray, ci: float, requested: int
) -> dict[str, Any]:
    """``{value, low, high, n_boot, n_requested, ci}`` of one metric from its resampled values
    (non-finite ones dropped); low / high are None when ``value`` is undefined or fewer than two
    resamples were usable."""
    vals = boots[np.isfinite(boots)]
    low = high = None
    if value is not None and vals.size >= 2:
        alpha = 1.0 - ci
        low, high = (float(q) for q in np.quantile(vals, [alpha / 2, 1 - alpha / 2]))
    return {
        "value": value,
        "low": low,
        "high": high,
        "n_boot": int(vals.size),
        "n_requested": requested,
        "ci": ci,
    }


def delta_summary(
    metric: str, va: float | None, vb: float | None, d: np.ndarray, n_boot: int, ci: float
) -> dict[str, Any]:
    """A paired delta's result from the bootstrap differences ``d`` (non-finite ones dropped):
    percentile CI and a two-sided bootstrap p-value, None where undefined."""
    d = d[np.isfinite(d)]
    delta = None if va is None or vb is None else va - vb
    low = high = p_value = None
    if delta is not None and d.size >= 2:
        alpha = 1.0 - ci
        low, high = (float(q) for q in np.quantile(d, [alpha / 2, 1 - alpha / 2]))
        tail = min(np.sum(d <= 0), np.sum(d >= 0))
        p_value = float(min(1.0, 2.0 * (tail + 1) / (d.size + 1)))
    return {
        "metric": metric,
        "value_a": va,
        "value_b": vb,
        "delta": delta,
        "low": low,
        "high": high,
        "p_value": p_value,
        "n_boot": int(d.size),
        "n_requested": n_boot,
        "ci": ci,
    }
