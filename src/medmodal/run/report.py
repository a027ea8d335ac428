"""The HTML report of a run, a cross-validation or an evaluation: notes as sentences, tables as
tables (never a Python dict pasted into the page).

Sections drawn by packages above :mod:`medmodal.run` (the explanation gallery of
:mod:`medmodal.explain.gallery`) are registered in :data:`REPORT_SECTIONS` by those packages; this
module never imports them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medmodal.config import ExperimentConfig
from medmodal.data.dataset import MultimodalDataset
from medmodal.errors import ConfigError
from medmodal.evaluate import ReportData, ReportParts, write_report
from medmodal.evaluate.report import Section
from medmodal.evaluate.spec import EvalSpec
from medmodal.predictor import Predictor
from medmodal.registry import Registry
from medmodal.run.steps import Scored

#: report sections by name: ``fn(predictor, ds, probs, spec) -> [(anchor, title, html body)]``
REPORT_SECTIONS: Registry[list[Section]] = Registry(
    "report section", context=("predictor", "ds", "probs", "spec")
)


@dataclass(frozen=True)
class ReportContent:
    """What a run report adds to the predictions: ``notes`` (sentences; None entries are
    dropped), skipped samples ``bad``, ``tables`` ``{title: [row dict, ...]}`` and the
    ``predictor`` the registered sections (the explanation gallery) draw from (None: none)."""

    notes: Sequence[str | None] = ()
    bad: Sequence[Mapping[str, Any]] = ()
    tables: Mapping[str, Sequence[Mapping[str, Any]]] | None = None
    predictor: Predictor | None = None


def positive_note(spec: EvalSpec) -> str | None:
    if spec.task != "binary":
        return None
    neg, pos = spec.classes
    return (
        f"The positive class is {pos!r} (the other class is {neg!r}): sensitivity, PPV, "
        f"specificity, NPV and the ROC / PR curves are of {pos!r}, and a sample is called "
        f"{pos!r} when its probability is above {spec.threshold:g}."
    )


def missing_note(counts: Mapping[str, Mapping[str, Mapping[str, int]]]) -> str:
    """One sentence per split about absent and unreadable modalities."""
    parts = []
    for split, per in counts.items():
        gaps = [
            f"{m} absent in {c['absent']}" + (f" and unreadable in {c['bad']}" if c["bad"] else "")
            for m, c in per.items()
            if c["absent"] or c["bad"]
        ]
        parts.append(f"{split}: " + ("; ".join(gaps) if gaps else "every modality present"))
    return "Missing modalities per split (samples): " + ". ".join(parts) + "."


def ablation_rows(ablation: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the "one modality removed" table."""
    rows = []
    for removed, row in ablation.items():
        out = {"removed at test time": removed}
        for key in row:
            v = row.get(key)
            out[key.replace("_", " ")] = None if v is None else round(float(v), 4)
        rows.append(out)
    return rows


def trust_summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Calibration and conformal numbers of one split's metrics (``metrics["test"]``):
    ``ece_before, ece_after, brier_before, brier_after, temperature, method, nominal, coverage,
    mean_set_size, empty, joint_coverage, per_class`` (``per_class[name]``: n, coverage,
    mean_set_size, empty). Parts that were not fitted are None. The report's tables use it."""
    cal = metrics.get("calibration") or {}
    conf = metrics.get("conformal") or {}
    out: dict[str, Any] = {
        k: cal.get(k) for k in ("ece_before", "ece_after", "brier_before", "brier_after")
    }
    out["temperature"] = cal.get("temperature")
    if not cal:  # uncalibrated: the probabilities as they are are "after"
        out["ece_after"], out["brier_after"] = metrics.get("ece"), metrics.get("brier")
    for k in ("method", "nominal", "n", "coverage", "mean_set_size", "empty", "joint_coverage"):
        out[k] = conf.get(k)
    out["per_class"] = dict(conf.get("per_class") or {})
    return out


def run_trust_summary(run: Any, split: str = "test") -> dict[str, Any]:
    """:func:`trust_summary` of a run's ``split``: ``run`` is a RunResult, a run folder or its
    ``metrics.json`` (what a benchmark calls after ``api.fit``)."""
    if hasattr(run, "metrics"):
        metrics = run.metrics
    else:
        path = Path(run)
        path = path / "metrics.json" if path.is_dir() else path
        if not path.is_file():
            raise ConfigError(f"no metrics.json at {path}")
        metrics = json.loads(path.read_text())
    if split not in metrics:
        raise ConfigError(f"the run has no {split!r} metrics ({sorted(metrics)})")
    return trust_summary(metrics[split])


def trust_tables(metrics: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Report tables: calibration before / after, conformal coverage per true class, subgroups."""
    t, out = trust_summary(metrics), {}
    if t["ece_before"] is not None:
        out["Calibration before and after temperature scaling"] = [
            {"measure": name, "before": t[f"{key}_before"], "after": t[f"{key}_after"]}
            for name, key in (("ECE", "ece"), ("Brier score", "brier"))
        ]
    if t["coverage"] is not None:
        rows = [{"true class": "all", **_set_row(t)}]
        rows += [{"true class": c, **_set_row(v)} for c, v in t["per_class"].items()]
        title = f"Conformal prediction sets ({t['method']}, nominal coverage {t['nominal']:g})"
        out[title] = rows
    if metrics.get("subgroups"):
        out["Metrics per subgroup"] = subgroup_rows(metrics["subgroups"])
    return out


def _set_row(v: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "n": v.get("n"),
        "coverage": v.get("coverage"),
        "mean set size": v.get("mean_set_size"),
        "empty sets": v.get("empty"),
    }


def subgroup_rows(subgroups: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per group: size, each metric with its CI as text, conformal coverage."""
    rows = []
    for var, groups in subgroups.items():
        for g, r in groups.items():
            row: dict[str, Any] = {"variable": var, "group": g, "n": r["n"]}
            row["patients"] = r["patients"]
            for k, v in (r.get("values") or {}).items():
                row[k] = None if v is None else round(float(v), 4)
                c = (r.get("ci") or {}).get(k) or {}
                if c.get("low") is not None:
                    row[f"{k} CI"] = f"{c['low']:.3f} – {c['high']:.3f}"
            for k, v in (r.get("conformal") or {}).items():
                row[k.replace("_", " ")] = None if v is None else round(float(v), 4)
            rows.append(row)
    return rows


def trust_note(metrics: Mapping[str, Any]) -> str | None:
    """One paragraph on the temperature and the conformal sets, or None without them."""
    t, parts = trust_summary(metrics), []
    if t["temperature"] is not None:
        temps = ", ".join(f"{v:.3g}" for v in t["temperature"])
        parts.append(
            f"Probabilities are temperature-scaled (T = {temps}; fitted on the validation split "
            "by minimising the negative log-likelihood). It leaves argmax predictions and "
            "decisions at p > 0.5 unchanged (at another threshold they can change); the "
            "calibration table compares ECE and Brier score before and after."
        )
    if t["coverage"] is not None:
        n = metrics["conformal"].get("n_calibration")
        where = f"{n} validation samples" if n else "each fold's validation split"
        parts.append(
            f"Prediction sets: split-conformal {t['method']} fitted on {where} "
            f"for {t['nominal']:.0%} nominal coverage; here {t['coverage']:.1%} "
            f"of the true classes are in their set (mean set size {t['mean_set_size']:.2f}). The "
            "guarantee assumes these samples are exchangeable with the validation samples; "
            "under a shift (other patients, sites or devices) coverage can fall below nominal."
        )
    return " ".join(parts) or None


def write_run_report(
    path: Path,
    cfg: ExperimentConfig,
    spec: EvalSpec,
    ds: MultimodalDataset,
    scored: Scored,
    content: ReportContent,
) -> Path:
    """One self-contained report of ``scored`` (probabilities, metrics and, when temperature-
    scaled, the probabilities before it for a second diagram) on ``ds``: the ablation table if
    present, calibration before / after, conformal sets and subgroups when the metrics hold
    them, and the registered sections (the explanation gallery when ``spec.gallery`` > 0)."""
    metrics = scored.metrics
    extra = dict(content.tables or {})
    if metrics.get("ablation"):
        what = "Harrell's C" if spec.task == "survival" else "AUROC"
        extra[f"{what} with one modality removed at test time"] = ablation_rows(metrics["ablation"])
    extra.update(trust_tables(metrics))
    notes = [positive_note(spec), *content.notes, trust_note(metrics)]
    labels, ci = np.asarray(ds.labels), metrics.get("ci")
    data = ReportData(labels, scored.probs, metrics, ci, scored.raw_probs, ds.ids)
    parts = ReportParts(
        notes=[n for n in notes if n],
        tables=extra or None,
        sections=report_sections(content.predictor, ds, scored.probs, spec),
        bad_samples=list(content.bad),
        config=cfg.to_dict(),
    )
    return write_report(path, data, spec, title=f"medmodal: {cfg.name}", parts=parts)


def report_sections(
    predictor: Predictor | None, ds: MultimodalDataset, probs: np.ndarray, spec: EvalSpec
) -> list[Section]:
    """The sections of every entry of :data:`REPORT_SECTIONS` (none without a predictor); a
    gallery asked for while :mod:`medmodal.explain.gallery` is not loaded says so."""
    if predictor is None:
        return []
    out: list[Section] = []
    for name in REPORT_SECTIONS.ordered():
        out += REPORT_SECTIONS.get(name)(predictor=predictor, ds=ds, probs=probs, spec=spec)
    if spec.gallery > 0 and spec.task != "survival" and "gallery" not in REPORT_SECTIONS:
        body = (
            f"<p>evaluate.gallery is {spec.gallery}, but medmodal.explain.gallery was not "
            "imported (medmodal.api imports it), so no gallery was drawn.</p>"
        )
        out.append(("gallery", "Explanation gallery", body))
    return out
