"""The fitted part of a survival model besides the network: the discrete-time cuts (logistic
hazard) or the Breslow baseline (Cox), and how logits become risk scores and survival curves.

Fitted attributes end in ``_`` and are stored in the checkpoint as plain lists of floats.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from medmodal.config import SurvivalOptions
from medmodal.errors import DataError
from medmodal.survival.losses import CoxLoss, LogisticHazardLoss


def breslow(eta: np.ndarray, time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Breslow's baseline cumulative hazard: at each distinct time ``t``,
    ``H0(t) = sum_{s <= t} d_s / sum_{time_j >= s} exp(eta_j)``. Returns (times, H0)."""
    eta, time, event = (np.asarray(a, dtype=float).reshape(-1) for a in (eta, time, event))
    uniq, inv = np.unique(time, return_inverse=True)
    risk = np.exp(eta - eta.max())
    at_risk = np.cumsum(np.bincount(inv, risk, len(uniq))[::-1])[::-1] * np.exp(eta.max())
    deaths = np.bincount(inv, event, len(uniq))
    return uniq, np.cumsum(deaths / at_risk)


def step_at(times: np.ndarray, values: np.ndarray, at: np.ndarray, before: float) -> np.ndarray:
    """A right-continuous step function (``values[i]`` from ``times[i]`` on) read at ``at``;
    ``before`` ahead of the first time. Works on the last axis of ``values``."""
    idx = np.searchsorted(np.asarray(times), np.asarray(at, dtype=float), side="right") - 1
    vals = np.asarray(values)
    out = np.take(vals, np.clip(idx, 0, None), axis=-1)
    return np.where(idx < 0, before, out)


class SurvivalModel:
    """Cox or logistic hazard: loss, risk score and survival curve from the network's logits."""

    def __init__(self, options: SurvivalOptions) -> None:
        self.options = options
        self.cuts_: list[float] | None = None
        self.baseline_times_: list[float] | None = None
        self.baseline_cumhaz_: list[float] | None = None

    @property
    def method(self) -> str:
        return self.options.method

    @property
    def n_outputs(self) -> int:
        return 1 if self.method == "cox" else self.options.bins

    def fit_cuts(self, time: np.ndarray, event: np.ndarray) -> SurvivalModel:
        """Logistic hazard: interval bounds at quantiles of the training event times."""
        if self.method != "logistic_hazard":
            return self
        events = np.asarray(time, float)[np.asarray(event) > 0]
        qs = np.quantile(events, np.linspace(0, 1, self.options.bins + 1)[1:])
        cuts = np.unique(np.concatenate([[0.0], qs]))
        cuts = np.interp(np.arange(self.options.bins + 1), np.arange(len(cuts)), cuts)
        if np.any(np.diff(cuts) <= 0):  # too few distinct event times: equal-width cuts
            cuts = np.linspace(0.0, float(events.max()), self.options.bins + 1)
        self.cuts_ = [float(c) for c in cuts]
        return self

    def fit_baseline(self, logits: torch.Tensor, time: np.ndarray, event: np.ndarray) -> None:
        """Cox: Breslow baseline from the training rows' linear predictors (after training)."""
        if self.method != "cox":
            return
        times, cumhaz = breslow(logits[:, 0].double().numpy(), time, event)
        self.baseline_times_ = times.tolist()
        self.baseline_cumhaz_ = cumhaz.tolist()

    def loss(self) -> nn.Module:
        if self.method == "cox":
            return CoxLoss()
        if self.cuts_ is None:
            raise RuntimeError("fit_cuts before building the logistic-hazard loss")
        return LogisticHazardLoss(torch.tensor(self.cuts_))

    def risk(self, logits: torch.Tensor) -> np.ndarray:
        """Higher = earlier event. Cox: the linear predictor; logistic hazard: the expected
        number of intervals not survived (sum over the grid of 1 - S)."""
        if self.method == "cox":
            return logits[:, 0].double().numpy()
        surv = torch.cumprod(torch.sigmoid(-logits.double()), dim=1)
        return (1.0 - surv).sum(1).numpy()

    def curves(self, logits: torch.Tensor, times: np.ndarray) -> np.ndarray:
        """(N, T) survival probability at ``times``."""
        if self.method == "cox":
            if self.baseline_times_ is None:
                raise RuntimeError("the Breslow baseline is not fitted")
            h0 = step_at(np.array(self.baseline_times_), np.array(self.baseline_cumhaz_), times, 0)
            return np.exp(-np.exp(logits[:, :1].double().numpy()) * h0[None, :])
        surv = torch.cumprod(torch.sigmoid(-logits.double()), dim=1).numpy()
        assert self.cuts_ is not None
        return step_at(np.array(self.cuts_[1:]), surv, times, 1.0)

    def state_dict(self) -> dict[str, Any]:
        return {
            "options": self.options.model_dump(),
            "cuts_": self.cuts_,
            "baseline_times_": self.baseline_times_,
            "baseline_cumhaz_": self.baseline_cumhaz_,
        }

    def load_state_dict(self, state: dict[str, Any]) -> SurvivalModel:
        for key in ("cuts_", "baseline_times_", "baseline_cumhaz_"):
            v = state.get(key)
            setattr(self, key, None if v is None else [float(x) for x in v])
        return self


def check_events(labels: np.ndarray, ids: list[str], split: str) -> None:
    """A survival split needs at least one event: DataError naming the split and rows."""
    if labels is None or len(labels) == 0:
        return
    if not (np.asarray(labels)[:, 1] > 0).any():
        shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
        raise DataError(
            f"the {split} split has no event: its {len(ids)} rows ({shown}) are all censored; a "
            "survival model cannot be fitted or scored without events (add rows with events, "
            "change the split fractions or the seed)"
        )
