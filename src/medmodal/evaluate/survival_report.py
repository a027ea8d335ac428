"""The survival sections of the HTML report: headline metrics with CIs, Kaplan-Meier curves by
predicted risk group, calibration at the evaluation times, predicted curves of example rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from medmodal.evaluate.survival import km_at, unpack

LABELS = {
    "c_index": "Harrell's C",
    "c_index_uno": "Uno's C (IPCW)",
    "mean_auc": "Time-dependent AUC (mean over the times)",
    "ibs": "Integrated Brier score (lower is better)",
}
GROUP_NAMES = ("low", "middle", "high")


def headline_rows(metrics: Mapping[str, Any], ci: Mapping[str, Any]) -> list[list[Any]]:
    """[name, value, CI text, resamples] rows, then the AUC at each time."""
    rows: list[list[Any]] = [["N (events)", f"{metrics['n']} ({metrics['n_events']})", "", ""]]
    for key, label in LABELS.items():
        if key not in metrics:
            continue
        e = ci.get(key) or {}
        text = "" if e.get("low") is None else f"{e['low']:.4f} – {e['high']:.4f}"
        used = f"{e['n_boot']}/{e['n_requested']}" if e else ""
        rows.append([label, metrics.get(key), text, used])
    for t, auc in (metrics.get("auc") or {}).items():
        rows.append([f"AUC at t = {t}", auc, "", ""])
    return rows


def km_figure(y_true: Any, y_prob: Any) -> Figure:
    """Observed Kaplan-Meier curves of the thirds of the rows by predicted risk."""
    time, event, risk, _ = unpack(y_true, y_prob)
    fig = Figure(figsize=(6.4, 4.6))
    ax = fig.add_subplot()
    order = np.argsort(risk, kind="stable")
    for name, idx in zip(GROUP_NAMES, np.array_split(order, 3), strict=True):
        if len(idx):
            t, s = km_at(time[idx], event[idx])
            ax.step(np.r_[0, t], np.r_[1, s], where="post", label=f"{name} risk (n={len(idx)})")
    ax.set(xlabel="time", ylabel="observed survival (Kaplan-Meier)", ylim=(0, 1.02))
    ax.set_title("Kaplan-Meier curves by predicted risk group (thirds)")
    ax.legend(loc="lower left", fontsize="small")
    return fig


def calibration_figure(calibration: Mapping[str, Sequence[Mapping[str, Any]]]) -> Figure:
    """Predicted vs observed (Kaplan-Meier) S(t) per group of predicted S(t), one line per t."""
    fig = Figure(figsize=(5.4, 5.0))
    ax = fig.add_subplot()
    for t, rows in calibration.items():
        pred = [r["predicted"] for r in rows]
        obs = [r["observed"] for r in rows]
        ax.plot(pred, obs, marker="o", label=f"t = {t}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted S(t) (group mean)")
    ax.set(ylabel="observed S(t) (Kaplan-Meier)", title="Calibration at the evaluation times")
    ax.legend(loc="upper left", fontsize="small")
    return fig


def examples_figure(y_prob: Any, y_true: Any, times: Sequence[float], ids: Sequence[str]) -> Figure:
    """Predicted survival curves of five rows at the 5/25/50/75/95 % quantiles of risk."""
    time, event, risk, curves = unpack(y_true, y_prob)
    fig = Figure(figsize=(6.4, 4.6))
    ax = fig.add_subplot()
    order = np.argsort(risk, kind="stable")
    for q in (0.05, 0.25, 0.5, 0.75, 0.95):
        i = int(order[min(len(order) - 1, int(q * len(order)))])
        what = "event" if event[i] else "censored"
        label = f"{ids[i]} (risk q{int(q * 100)}; {what} at {time[i]:g})"
        assert curves is not None
        ax.step(times, curves[i], where="post", label=label)
    ax.set(xlabel="time", ylabel="predicted survival probability", ylim=(0, 1.02))
    ax.set_title("Predicted survival curves of example rows")
    ax.legend(loc="lower left", fontsize="x-small")
    return fig
