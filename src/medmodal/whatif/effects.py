"""Average what-if effects with patient-grouped bootstrap CIs: the RMST difference and the
implied hazard ratio (geometric mean over patients of the cumulative-hazard ratio at the horizon;
for a Cox model that is each patient's hazard ratio, constant in time)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medmodal.evaluate.resample import group_index, resample_weights

_EPS = 1e-12


def log_hazard_ratio(s_value: np.ndarray, s_ref: np.ndarray) -> np.ndarray:
    """log(Lambda_value(h) / Lambda_ref(h)) per patient from S(h) under each value."""
    lam_v = -np.log(np.clip(s_value, _EPS, 1 - _EPS))
    lam_r = -np.log(np.clip(s_ref, _EPS, 1 - _EPS))
    return np.log(lam_v) - np.log(lam_r)


def effect_summary(
    delta_rmst: np.ndarray,
    log_hr: np.ndarray,
    groups: Sequence[str],
    n_boot: int,
    seed: int,
    ci: float = 0.95,
) -> dict[str, Any]:
    """Mean RMST difference and geometric-mean hazard ratio over the rows, each with a
    percentile CI from resampling whole patients (``n_boot`` 0: no CI)."""
    out: dict[str, Any] = {
        "mean_delta_rmst": float(delta_rmst.mean()),
        "median_delta_rmst": float(np.median(delta_rmst)),
        "share_delta_rmst_positive": float((delta_rmst > 0).mean()),
        "hazard_ratio": float(np.exp(log_hr.mean())),
        "mean_delta_rmst_ci": [None, None],
        "hazard_ratio_ci": [None, None],
        "n_boot": n_boot,
    }
    if not n_boot:
        return out
    rng = np.random.default_rng(seed)
    w = resample_weights(rng, len(delta_rmst), n_boot, group_index(list(groups), len(groups)))
    total = w.sum(1)
    q = [(1 - ci) / 2, 1 - (1 - ci) / 2]
    out["mean_delta_rmst_ci"] = np.quantile(w @ delta_rmst / total, q).tolist()
    out["hazard_ratio_ci"] = np.exp(np.quantile(w @ log_hr / total, q)).tolist()
    return out
