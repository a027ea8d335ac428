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
from medmodal.evaluate.metrics import compute_metrics

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
    task: str,
    names: Sequence[str],
    groups: Mapping[str, Sequence[str]],
    *,
    patients: Sequence[Any],
    metrics: Sequence[str],
    sets: np.ndarray | None = None,
    threshold: float = 0.5,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """``{variable: {group: {n, patients, values: {metric: v}, ci: {metric: {...}},
    conformal: {...}}}}`` for each variable's groups (``groups[variable]``: a name per sample).
    Values come from :func:`compute_metrics`, CIs from :func:`bootstrap_ci` over ``patients``."""
    y, probs, pats = np.asarray(y), np.asarray(probs), np.asarray(patients, dtype=object)
    out: dict[str, dict[str, Any]] = {}
    for var, labels in groups.items():
        lab = np.asarray(labels, dtype=object)
        out[var] = {}
        for g in sorted(set(lab), key=lambda v: (v == UNKNOWN, _order(v))):
            idx = np.flatnonzero(lab == g)
            row: dict[str, Any] = {"n": len(idx), "patients": len(set(pats[idx]))}
            if len(idx) >= MIN_GROUP:
                m = compute_metrics(y[idx], probs[idx], task, names, threshold)
                row["values"] = {k: m.get(k) for k in metrics}
                if n_boot:
                    row["ci"] = bootstrap_ci(
                        y[idx],
                        probs[idx],
                        task,
                        names,
                        metrics=metrics,
                        n_boot=n_boot,
                        ci=ci,
                        seed=seed,
                        groups=pats[idx],
                        threshold=threshold,
                    )
                if sets is not None:
                    summary = set_summary(y[idx], sets[idx], task, names)
                    row["conformal"] = {k: summary[k] for k in ("coverage", "mean_set_size")}
            out[var][str(g)] = row
    return out


def _order(label: str) -> tuple[float, str]:
    """Bands in numeric order (``< 40`` first), other names alphabetically."""
    text = label.lstrip("<>=[ ")
    head = text.split(",")[0].strip()
    try:
        value = float(head)
    except ValueError:
        return (0.0, label)
    return (value - (0.5 if label.startswith("<") else 0.0), label)
