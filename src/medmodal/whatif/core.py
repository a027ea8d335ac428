"""Personalised what-if under a treatment (S-learner): every patient's predicted survival curve
with the treatment input set to each of its values, the restricted mean survival time (RMST)
difference with a patient-grouped bootstrap CI, and the propensity overlap.

The model must have been trained with the treatment as one of its (tabular) inputs. What comes
out are associations the model learned from observational or trial data, not causal effects and
not treatment advice (:data:`CAVEAT` is in every output).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medmodal.errors import ConfigError, ManifestError
from medmodal.predictor import Predictor

CAVEAT = (
    "These are associations the model learned from the data, not causal effects and not "
    "treatment advice: who received the treatment was not random in the data unless it was a "
    "trial, unmeasured differences between groups are not removed, and predictions outside the "
    "covariate overlap are extrapolation."
)
MAX_NUMERIC_VALUES = 10


@dataclass
class WhatIfResult:
    """Per-patient rows, the curves under each value (times x patients), and the summary."""

    frame: pd.DataFrame
    times: np.ndarray
    curves: dict[str, np.ndarray]
    summary: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


def treatment_spec(predictor: Predictor, column: str) -> tuple[str, bool]:
    """(modality, categorical?) of the tabular input ``column``; ConfigError if it is none."""
    if predictor.label_map.task != "survival":
        raise ConfigError("the what-if needs a survival model (target task: survival)")
    for m, spec in predictor.schema.modalities.items():
        if spec.type == "tabular" and column in spec.input_columns():
            return m, column in spec.categorical
    inputs = [c for s in predictor.schema.modalities.values() if s.type == "tabular"
              for c in s.input_columns()]  # fmt: skip
    raise ConfigError(
        f"treatment column {column!r} is not an input of the model (tabular inputs: {inputs}); "
        "train the model with the treatment as an input (S-learner) to ask what-if questions"
    )


def treatment_values(
    predictor: Predictor, frame: pd.DataFrame, column: str, given: Sequence[str] | None
) -> list[str]:
    """The values to set: ``given``, else the training vocabulary of a categorical input, else
    the distinct values of a numeric input in ``frame`` (at most :data:`MAX_NUMERIC_VALUES`)."""
    modality, categorical = treatment_spec(predictor, column)
    if given:
        return [str(v) for v in given]
    if categorical:
        proc = predictor.processors[modality]
        j = proc.categorical_columns.index(column)  # type: ignore[attr-defined]
        return list(proc.vocab_[j])  # type: ignore[attr-defined]
    if column not in frame.columns:
        raise ManifestError(f"the input has no column {column!r}; give the values (--values)")
    vals = pd.to_numeric(frame[column], errors="coerce").dropna().unique()
    if len(vals) > MAX_NUMERIC_VALUES:
        raise ConfigError(
            f"treatment {column!r} takes {len(vals)} values; give the ones to compare (--values)"
        )
    return [f"{v:g}" for v in sorted(vals)]


def curves_under(
    predictor: Predictor, frame: pd.DataFrame, root: Path | None, column: str, value: str
) -> tuple[list[str], list[str], np.ndarray]:
    """(sample ids, patient ids, (N, T) survival curves) with ``column`` set to ``value``."""
    changed = predictor.align(frame).assign(**{column: value})
    ds = predictor.dataset(changed, root, None, with_labels=False, source=f"{column}={value}")
    probs = predictor.predict_proba(ds)
    return ds.ids, ds.patients, probs[:, 1:]


def rmst(curves: np.ndarray, times: np.ndarray, horizon: float) -> np.ndarray:
    """Area under each right-continuous step curve from 0 to ``horizon``."""
    t = np.asarray(times, float)
    upper = np.minimum(np.r_[t[1:], np.inf], horizon)
    width = np.clip(upper - t, 0.0, None)
    start = curves if t[0] == 0 else np.column_stack([np.ones(len(curves)), curves])
    if t[0] != 0:
        width = np.r_[min(t[0], horizon), width]
    return start @ width


def at_horizon(curves: np.ndarray, times: np.ndarray, horizon: float) -> np.ndarray:
    """S(horizon) of each curve (the step value at the last grid time <= horizon)."""
    k = max(0, int(np.searchsorted(times, horizon, side="right")) - 1)
    return curves[:, k]


def default_horizon(predictor: Predictor, times: np.ndarray) -> float:
    """The 80th percentile of the observed times (the grid is their quantiles), and no later
    than the Cox baseline's last time."""
    horizon = float(np.quantile(times, 0.8))
    s = predictor.survival
    if s is not None and s.baseline_times_:
        horizon = min(horizon, float(max(s.baseline_times_)))
    return horizon
