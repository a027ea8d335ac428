"""Patient-grouped percentile-bootstrap CIs of survival metrics, and paired C-index deltas.

Resamples are drawn as in :mod:`medmodal.evaluate.resample` (whole patients with replacement).
Harrell's C of every resample comes from one weighted pass; Uno's C, the time-dependent AUC and
the integrated Brier score are recomputed by scikit-survival on the first
:data:`~medmodal.evaluate.survival.SLOW_BOOT` resamples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medmodal.evaluate.resample import (
    check_ci,
    delta_summary,
    group_index,
    percentile_ci,
    resample_weights,
)
from medmodal.evaluate.spec import EvalSpec
from medmodal.evaluate.survival import (
    SCALARS,
    SLOW_BOOT,
    default_times,
    harrell_weighted,
    ipcw_metrics,
    survival_metrics,
    unpack,
)

_CHUNK = 250


def _weights(n: int, n_boot: int, seed: int, groups: Sequence[Any] | None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    index = group_index(groups, n)
    parts, done = [], 0
    while done < n_boot:
        size = min(_CHUNK, n_boot - done)
        parts.append(resample_weights(rng, n, size, index))
        done += size
    return np.concatenate(parts)


def _slow(
    y_true: Any, y_prob: Any, times: Any, eval_times: Any, w: np.ndarray
) -> dict[str, np.ndarray]:
    """Uno's C, mean AUC and IBS on each resample (rows of ``w``), by repeating rows."""
    time, event, risk, curves = unpack(y_true, y_prob)
    grid = None if times is None else np.asarray(times, float)
    fixed = default_times(time, event, eval_times) if event.any() else np.array([])
    out: dict[str, list[float]] = {k: [] for k in ("c_index_uno", "mean_auc", "ibs")}
    for row in w:
        idx = np.repeat(np.arange(len(time)), row.astype(int))
        c = None if curves is None else curves[idx]
        m = ipcw_metrics(time[idx], event[idx], risk[idx], c, grid, fixed)
        for k in out:
            out[k].append(np.nan if m.get(k) is None else m[k])
    return {k: np.asarray(v, float) for k, v in out.items()}


def survival_bootstrap_ci(
    y_true: Any,
    y_prob: Any,
    spec: EvalSpec,
    metrics: Sequence[str] = SCALARS,
    groups: Sequence[Any] | None = None,
    *,
    point: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """``{metric: {value, low, high, n_boot, n_requested, ci}}`` as :func:`bootstrap_ci`, with
    the spec's resamples, level, seed, curve grid (``times``) and evaluation times.

    ``point``: the metrics already computed on all rows (else computed here)."""
    n_boot, times, eval_times = spec.n_boot, spec.times, spec.eval_times
    check_ci(spec.ci, n_boot)
    bad = sorted(set(metrics) - set(SCALARS))
    if bad:
        raise ValueError(f"unknown survival metric(s) {bad}; known: {list(SCALARS)}")
    point = point or survival_metrics(y_true, y_prob, times, eval_times)
    time, event, risk, _ = unpack(y_true, y_prob)
    w = _weights(len(time), n_boot, spec.seed, groups)
    boots = {"c_index": harrell_weighted(time, event, risk, w)}
    if set(metrics) - {"c_index"}:
        boots.update(_slow(y_true, y_prob, times, eval_times, w[:SLOW_BOOT]))
    return {
        name: percentile_ci(
            point.get(name),
            boots[name],
            spec.ci,
            n_boot if name == "c_index" else min(n_boot, SLOW_BOOT),
        )
        for name in metrics
    }


def survival_paired_delta(
    y_true: Any, prob_a: Any, prob_b: Any, spec: EvalSpec, groups: Sequence[Any] | None = None
) -> dict[str, Any]:
    """Paired bootstrap of Harrell's C(a) - C(b) on the same resamples; keys as
    :func:`paired_bootstrap_delta` (``metric`` is ``c_index``)."""
    check_ci(spec.ci, spec.n_boot)
    time, event, ra, _ = unpack(y_true, prob_a)
    _, _, rb, _ = unpack(y_true, prob_b)
    ones = np.ones((1, len(time)))
    va = float(harrell_weighted(time, event, ra, ones)[0])
    vb = float(harrell_weighted(time, event, rb, ones)[0])
    w = _weights(len(time), spec.n_boot, spec.seed, groups)
    d = harrell_weighted(time, event, ra, w) - harrell_weighted(time, event, rb, w)
    return delta_summary(
        "c_index",
        None if np.isnan(va) else va,
        None if np.isnan(vb) else vb,
        d,
        spec.n_boot,
        spec.ci,
    )
