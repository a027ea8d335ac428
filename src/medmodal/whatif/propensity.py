"""Covariate overlap: a logistic regression of the (binary) treatment on the other tabular
inputs, and how much of each group lies where the other group is rare."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from medmodal.data.schema import Schema

EXTREME = 0.05


def covariates(frame: pd.DataFrame, schema: Schema, treatment: str) -> pd.DataFrame:
    """The other tabular inputs: numbers (median-imputed, standardised) and one-hot categories."""
    num, cat = [], []
    for spec in schema.modalities.values():
        if spec.type != "tabular":
            continue
        for c in spec.input_columns():
            if c != treatment and c in frame.columns:
                (cat if c in spec.categorical else num).append(c)
    X = frame[num].apply(pd.to_numeric, errors="coerce")
    X = (X.fillna(X.median()) - X.mean()) / X.std().replace(0, 1).fillna(1)
    dummies = pd.get_dummies(frame[cat].astype(str), dtype=float, drop_first=True)
    return pd.concat([X.fillna(0.0), dummies], axis=1)


def propensity(
    frame: pd.DataFrame, schema: Schema, treatment: str, values: list[str]
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """P(treatment = values[1] | covariates) per row and an overlap summary; None when the
    treatment is not binary or not given in ``frame``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    if len(values) != 2 or treatment not in frame.columns:
        return None, {"summary": "not computed (needs a binary treatment given in the input)"}
    actual = _as_value(frame[treatment], values)
    known = actual >= 0
    X = covariates(frame, schema, treatment)
    if X.shape[1] == 0 or len(np.unique(actual[known])) < 2:
        return None, {"summary": "not computed (no other covariate, or one group only)"}
    model = LogisticRegression(max_iter=2000).fit(X[known], actual[known])
    p = model.predict_proba(X)[:, 1]
    return p, overlap(p, actual, values, float(roc_auc_score(actual[known], p[known])))


def _as_value(col: pd.Series, values: list[str]) -> np.ndarray:
    """0 / 1 for values[0] / values[1], -1 for anything else (missing)."""
    s = col.astype(str).str.strip()
    num = pd.to_numeric(col, errors="coerce")
    out = np.full(len(col), -1)
    for k, v in enumerate(values):
        match = s == v
        if not match.any():
            try:
                match = num == float(v)
            except ValueError:
                pass
        out[np.asarray(match, dtype=bool)] = k
    return out


def overlap(p: np.ndarray, actual: np.ndarray, values: list[str], auc: float) -> dict[str, Any]:
    """Propensity quantiles per group and the share of rows outside [EXTREME, 1 - EXTREME]."""
    groups = {}
    for k, v in enumerate(values):
        pk = p[actual == k]
        groups[v] = {
            "n": int(pk.size),
            "quantiles_5_50_95": np.quantile(pk, [0.05, 0.5, 0.95]).tolist() if pk.size else None,
        }
    outside = float(((p < EXTREME) | (p > 1 - EXTREME)).mean())
    lo = max(float(p[actual == 0].min()), float(p[actual == 1].min()))
    hi = min(float(p[actual == 0].max()), float(p[actual == 1].max()))
    return {
        "groups": groups,
        "auroc": auc,
        "share_outside_0.05_0.95": outside,
        "common_support": [lo, hi],
        "summary": (
            f"propensity model AUROC {auc:.2f} (0.5: the groups look alike); "
            f"{outside:.0%} of rows have a propensity outside [{EXTREME}, {1 - EXTREME}]; "
            f"common support [{lo:.2f}, {hi:.2f}]"
        ),
    }
