"""Survival metrics: Harrell's and Uno's C, time-dependent AUC, the integrated Brier score
(scikit-survival), calibration at chosen times, and patient-grouped bootstrap CIs.

Predictions are what :meth:`Predictor.predict_proba` returns for a survival target: (N,) risk
scores, or (N, 1 + T) with the survival probability at the grid ``times`` after the risk.
The IPCW metrics (Uno's C, time-dependent AUC, Brier) estimate the censoring distribution on the
evaluated rows themselves. Harrell's C is resampled by a weighted pair engine (every resample at
once; equal to scikit-survival's at unit weights); the other metrics call scikit-survival on
each resample, at most :data:`SLOW_BOOT` of them (``n_boot`` in the result says how many).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from medmodal.errors import ConfigError
from medmodal.survival.model import step_at

SCALARS = ("c_index", "c_index_uno", "mean_auc", "ibs")
SLOW_BOOT = 200
TIED_TOL = 1e-8
_CELLS = 4_000_000


def unpack(
    y_true: Any, y_prob: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(time, event bool, risk, curves or None) with shapes checked."""
    y = np.asarray(y_true, dtype=float)
    p = np.asarray(y_prob, dtype=float)
    if y.ndim != 2 or y.shape[1] != 2:
        raise ValueError(f"survival y_true must be (N, 2) time, event; got shape {y.shape}")
    if len(p) != len(y):
        raise ValueError(f"y_prob has {len(p)} rows, y_true {len(y)}")
    if not np.isfinite(p).all():
        raise ValueError("survival predictions contain NaN or infinity")
    if p.ndim == 1:
        return y[:, 0], y[:, 1] > 0, p, None
    return y[:, 0], y[:, 1] > 0, p[:, 0], (p[:, 1:] if p.shape[1] > 1 else None)


def default_times(time: np.ndarray, event: np.ndarray, given: Sequence[float] | None) -> np.ndarray:
    """Evaluation times: ``given`` (kept inside the follow-up), else the 25/50/75 % quantiles of
    the event times."""
    cand = np.asarray(given, float) if given else np.quantile(time[event], [0.25, 0.5, 0.75])
    inside = cand[(cand >= time.min()) & (cand < time.max())]
    return np.unique(inside)


def harrell_weighted(
    time: np.ndarray, event: np.ndarray, risk: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Harrell's C for each row of ``weights`` (B, N) (resample counts; ones: the estimate).
    A pair (i, j) is comparable when i has the event and j's time is later (or equal and j
    censored), as in scikit-survival; a risk tie counts 1/2. NaN without comparable pairs."""
    w = np.atleast_2d(np.asarray(weights, dtype=np.float32))
    wt = np.ascontiguousarray(w.T)
    num, den = np.zeros(len(w)), np.zeros(len(w))
    ev = np.flatnonzero(event)
    step = max(1, _CELLS // max(len(time), 1))
    for s in range(0, len(ev), step):
        i = ev[s : s + step]
        ti, ri = time[i][:, None], risk[i][:, None]
        comp = (time[None, :] > ti) | ((time[None, :] == ti) & ~event[None, :])
        diff = risk[None, :] - ri
        score = np.where(np.abs(diff) <= TIED_TOL, 0.5, (diff < 0).astype(float)) * comp
        wi = w[:, i]
        num += np.einsum("bc,cb->b", wi, score.astype(np.float32) @ wt)
        den += np.einsum("bc,cb->b", wi, comp.astype(np.float32) @ wt)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1e-300), np.nan)


def _structured(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    from sksurv.util import Surv

    return Surv.from_arrays(event=event.astype(bool), time=time)


def ipcw_metrics(
    time: np.ndarray,
    event: np.ndarray,
    risk: np.ndarray,
    curves: np.ndarray | None,
    grid: np.ndarray | None,
    eval_times: np.ndarray,
) -> dict[str, Any]:
    """Uno's C (truncated at the 90 % quantile of observed times), time-dependent AUC at
    ``eval_times`` and the integrated Brier score over the 10-90 % quantiles (needs curves)."""
    try:
        from sksurv.metrics import (
            concordance_index_ipcw,
            cumulative_dynamic_auc,
            integrated_brier_score,
        )
    except ImportError:
        raise ConfigError(
            "survival metrics need scikit-survival: pip install 'medmodal[survival]'"
        ) from None

    y = _structured(time, event)
    out: dict[str, Any] = {"c_index_uno": None, "mean_auc": None, "ibs": None, "auc": {}}
    tau = float(np.quantile(time, 0.9))
    out["uno_tau"] = tau
    out["c_index_uno"] = _try(lambda: concordance_index_ipcw(y, y, risk, tau=tau)[0])
    if curves is None or grid is None or len(eval_times) == 0:
        return out
    at = 1.0 - step_at(grid, curves, eval_times, 1.0)
    auc = _try(lambda: cumulative_dynamic_auc(y, y, at, eval_times))
    if auc is not None:
        out["auc"] = {f"{t:g}": float(a) for t, a in zip(eval_times, auc[0], strict=True)}
        out["mean_auc"] = float(auc[1])
    lo, hi = np.quantile(time, [0.1, 0.9])
    ibs_times = np.unique(np.linspace(lo, min(hi, time.max() - 1e-9), 30))
    out["ibs_range"] = [float(lo), float(hi)]
    surv = step_at(grid, curves, ibs_times, 1.0)
    out["ibs"] = _try(lambda: integrated_brier_score(y, y, surv, ibs_times))
    return out


def _try(fn: Any) -> Any:
    """The value, or None when scikit-survival finds the metric undefined on these rows."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            v = fn()
    except (ValueError, ZeroDivisionError, AssertionError):
        return None
    if isinstance(v, tuple):
        return v
    return float(v) if np.isfinite(v) else None


def calibration_at(
    time: np.ndarray, event: np.ndarray, surv_at: np.ndarray, t: float, groups: int = 5
) -> list[dict[str, Any]]:
    """Rows of predicted mean S(t) vs the Kaplan-Meier S(t) within ``groups`` quantile groups of
    the predicted S(t) (``surv_at`` is (N,) S(t))."""
    order = np.argsort(surv_at, kind="stable")
    rows = []
    for g, idx in enumerate(np.array_split(order, groups)):
        if len(idx) == 0:
            continue
        rows.append(
            {
                "group": g + 1,
                "n": len(idx),
                "predicted": float(surv_at[idx].mean()),
                "observed": km_at(time[idx], event[idx], t),
            }
        )
    return rows


def km_at(time: np.ndarray, event: np.ndarray, t: float | None = None) -> Any:
    """Kaplan-Meier curve (times, S) of the rows, or S(t) when ``t`` is given."""
    uniq, inv = np.unique(time, return_inverse=True)
    deaths = np.bincount(inv, event.astype(float), len(uniq))
    at_risk = np.cumsum(np.bincount(inv, None, len(uniq))[::-1])[::-1]
    surv = np.cumprod(1.0 - deaths / np.maximum(at_risk, 1))
    if t is None:
        return uniq, surv
    return float(step_at(uniq, surv, np.array([t]), 1.0)[0])


def survival_metrics(
    y_true: Any,
    y_prob: Any,
    times: Sequence[float] | None = None,
    eval_times: Sequence[float] | None = None,
) -> dict[str, Any]:
    """All survival metrics of one set of predictions (JSON-serialisable; undefined: None).

    ``times``: the grid of ``y_prob``'s curve columns. Returns ``n, task, n_events, c_index``
    (Harrell), and with curves ``c_index_uno, uno_tau, auc`` (time -> AUC), ``mean_auc, ibs,
    ibs_range, eval_times, calibration`` (time -> groups of predicted vs Kaplan-Meier S(t)),
    ``warnings``."""
    time, event, risk, curves = unpack(y_true, y_prob)
    c = harrell_weighted(time, event, risk, np.ones((1, len(time))))[0]
    out: dict[str, Any] = {
        "n": len(time),
        "task": "survival",
        "n_events": int(event.sum()),
        "c_index": None if np.isnan(c) else float(c),
        "warnings": [],
    }
    if curves is None:
        return out
    grid = np.asarray(times, dtype=float) if times is not None else None
    if grid is None or len(grid) != curves.shape[1]:
        raise ValueError("survival curves need their time grid (times) with one time per column")
    ev_times = default_times(time, event, eval_times) if event.any() else np.array([])
    out.update(ipcw_metrics(time, event, risk, curves, grid, ev_times))
    out["eval_times"] = ev_times.tolist()
    at = step_at(grid, curves, ev_times, 1.0)
    out["calibration"] = {
        f"{t:g}": calibration_at(time, event, at[:, k], t) for k, t in enumerate(ev_times)
    }
    out["warnings"] = [f"{k} is undefined (None)" for k in SCALARS if out.get(k) is None]
    return out
