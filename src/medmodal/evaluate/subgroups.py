"""Metrics per subgroup (sex, age band, site, ...) with patient-grouped bootstrap CIs.

A subgroup variable is a manifest column; with ``bins`` (ascending edges) a numeric column is
cut into half-open bands ``< b0``, ``[b0, b1)``, ..., ``>= bn``. Empty, missing or (binned)
non-numeric values form the group ``unknown``, which is reported like any other group, so no
sample silently disappears from the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from medmodal.evaluate.bootstrap import bootstrap_ci
from medmodal.evaluate.conformal import set_summary
from medmodal.evaluate.metrics import metrics_for
from medmodal.evaluate.spec import EvalSpec

UNKNOWN = "unknown"
MIN_GROUP = 2  # fewer samples: the group is listed with its size only


def group_labels(values: Sequence[Any], bins: Sequence[float] | None = None) -> list[str]:
    """A group name per value: the value as text, or its band when ``bins`` are given."""
    s = pd.Series(list(values), dtype=object)
    if bins is None:
        text = s.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else v)
        text = text.astype(str).str.strip()
        return [v if v and v.lower() != "nan" else UNKNOWN for v in text]
    x = pd.to_numeric(s, errors="coerce").to_numpy(dtype=float)
    edges = [float(b) for b in bins]
    names = [f"< {edges[0]:g}"]
    names += [f"[{a:g}, {b:g})" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    names.append(f">= {edges[-1]:g}")
    idx = np.searchsorted(edges, x, side="right")
    return [UNKNOWN if np.isnan(v) else names[i] for v, i in zip(x, idx, strict=True)]


def subgroup_metrics(
    y: np.ndarray,
    probs: np.ndarray,
    spec: EvalSpec,
    groups: Mapping[str, Sequence[str]],
    *,
    patients: Sequence[Any],
    metrics: Sequence[str],
    sets: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """``{variable: {group: {n, patients, values: {metric: v}, ci: {metric: {...}},
    conformal: {...}}}}`` for each variable's groups (``groups[variable]``: a name per sample).
    Values come from :func:`metrics_for`, CIs (when ``spec.n_boot``) from :func:`bootstrap_ci`
    over ``patients``."""
    y, probs, pats = np.asarray(y), np.asarray(probs), np.asarray(patients, dtype=object)
    out: dict[str, dict[str, Any]] = {}
    for var, labels in groups.items():
        lab = np.asarray(labels, dtype=object)
        out[var] = {}
        for g in sorted(set(lab), key=lambda v: (v == UNKNOWN, _order(v))):
            idx = np.flatnonzero(lab == g)
            out[var][str(g)] = _group_row(y[idx], probs[idx], spec, pats[idx], metrics, sets, idx)
    return out


def _group_row(
    y: np.ndarray,
    probs: np.ndarray,
    spec: EvalSpec,
    pats: np.ndarray,
    metrics: Sequence[str],
    sets: np.ndarray | None,
    idx: np.ndarray,
) -> dict[str, Any]:
    """One group's size, metric values, CIs and conformal coverage."""
    row: dict[str, Any] = {"n": len(idx), "patients": len(set(pats))}
    if len(idx) < MIN_GROUP:
        return row
    m = metrics_for(y, probs, spec)
    row["values"] = {k: m.get(k) for k in metrics}
    if spec.n_boot:
        row["ci"] = bootstrap_ci(y, probs, spec, metrics=metrics, groups=pats)
    if sets is not None:
        summary = set_summary(y, sets[idx], spec.task, list(spec.classes))
        row["conformal"] = {k: summary[k] for k in ("coverage", "mean_set_size")}
    return row


def _order(label: str) -> tuple[float, str]:
    """Bands in numeric order (``< 40`` first), other names alphabetically."""
    text = label.lstrip("<>=[ ")
    head = text.split(",")[0].strip()
    try:
        value = float(head)
    except ValueError:
        return (0.0, label)
    return (value - (0.5 if label.startswith("<") else 0.0), label)
