"""A model card from what a checkpoint holds: data and its hash, metrics with CIs, limits, versions.

Nothing is invented: every field comes from the checkpoint (config, schema, label map, metrics,
``data_hash``, versions; task, classes, positive class and threshold from the evaluation spec
derived from them) or says that the checkpoint does not record it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from medmodal import __version__
from medmodal.evaluate.spec import EvalSpec

CARD_METRICS = ("auroc", "auprc", "accuracy", "balanced_accuracy", "recall", "precision", "ece")
OF_CLASS = ("recall", "precision")  # binary: figures of the positive class
INTENDED_USE = (
    "Research and decision-support prototyping only: not a medical device, not validated for "
    "clinical use. A clinician must check every output."
)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_card(
    name: str, body: dict[str, Any], path: Path, runtime: str, spec: EvalSpec
) -> dict[str, Any]:
    """The card of one served model (JSON-ready); ``spec``: the loaded Predictor's
    ``eval_spec`` (derived from the checkpoint's config and label map)."""
    cfg, schema = body.get("config", {}), body.get("schema", {})
    target = schema.get("target", {})
    metrics = body.get("metrics") or {}
    return {
        "name": name,
        "task": spec.task,
        "classes": list(spec.classes),
        "positive_class": spec.positive,
        "threshold": spec.threshold,
        "inputs": _inputs(schema),
        "target_column": target.get("column"),
        "training_data": _data(cfg, body, metrics),
        "intended_use": body.get("intended_use") or INTENDED_USE,
        "metrics": _metrics(metrics, spec),
        "per_class": _per_class(metrics),
        "calibration": _present(body.get("calibration"), "temperature scaling"),
        "conformal": _present(body.get("conformal"), "conformal prediction sets"),
        "known_limits": _limits(body, metrics, spec),
        "model": {"config": cfg.get("model"), "runtime": runtime},
        "versions": {"trained_with": body.get("versions"), "served_by_medmodal": __version__},
        "checkpoint": {"file": path.name, "sha256": file_sha256(path)},
    }


def _inputs(schema: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for m, spec in (schema.get("modalities") or {}).items():
        cols = spec.get("columns") or []
        cats = spec.get("categorical") or []
        entry: dict[str, Any] = {"type": spec.get("type"), "part": m}
        if spec.get("type") == "tabular":
            entry["fields"] = [c for c in cols if c not in cats] + list(cats)
            entry["categorical"] = list(cats)
        out[m] = entry
    return out


def _data(cfg: dict[str, Any], body: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    data = cfg.get("data") or {}
    return {
        "dataset": data.get("dataset"),
        "manifest": Path(data["manifest"]).name if data.get("manifest") else None,
        "data_hash": body.get("data_hash"),
        "samples_per_split": metrics.get("n"),
        "missing_modalities": metrics.get("missing_modalities"),
        "seed": cfg.get("seed"),
    }


def _metrics(metrics: dict[str, Any], spec: EvalSpec) -> dict[str, Any]:
    """Headline figures with their CIs; a figure of one class names it (``class``)."""
    out: dict[str, Any] = {}
    for split in ("test", "val"):
        m = metrics.get(split)
        if not isinstance(m, dict):
            continue
        ci = m.get("ci") or {}
        out[split] = {}
        for k in CARD_METRICS:
            if not isinstance(m.get(k), int | float):
                continue
            entry: dict[str, Any] = {
                "value": m[k],
                "ci95": [ci[k].get("low"), ci[k].get("high")] if k in ci else None,
            }
            if k in OF_CLASS and spec.task == "binary":
                entry["class"] = spec.positive
            out[split][k] = entry
    return out


def _per_class(metrics: dict[str, Any]) -> dict[str, Any]:
    """Test recall, precision, support and how often each class was predicted."""
    test = metrics.get("test") or {}
    per, cm = test.get("per_class") or {}, test.get("confusion_matrix")
    names = list(test.get("class_names") or per)
    predicted = _predicted_counts(cm, names)
    return {
        c: {
            "recall": (per.get(c) or {}).get("recall"),
            "precision": (per.get(c) or {}).get("precision"),
            "support": (per.get(c) or {}).get("support"),
            "predicted": predicted.get(c),
        }
        for c in names
    }


def _predicted_counts(cm: Any, names: list[str]) -> dict[str, int]:
    """Column sums of a (true x predicted) confusion matrix, by class name."""
    try:
        cols = [int(sum(row[j] for row in cm)) for j in range(len(names))]
    except (TypeError, IndexError, ValueError):
        return {}
    return dict(zip(names, cols, strict=True))


def _present(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {"available": False, "note": f"this checkpoint holds no {what}"}
    return {"available": True, "fit": value}


def _limits(body: dict[str, Any], metrics: dict[str, Any], spec: EvalSpec) -> list[str]:
    out = []
    test = metrics.get("test") or {}
    n = (metrics.get("n") or {}).get("test")
    if n is not None:
        out.append(f"evaluated on {n} test samples; the CIs show how little that pins down")
    counts = _predicted_counts(test.get("confusion_matrix"), list(test.get("class_names") or []))
    for c, k in counts.items():
        if k == 0:
            out.append(
                f"on the test split the model never predicted class {c!r} (threshold "
                f"{spec.threshold:g}): its recall there is 0; do not rely on it to find {c!r}"
            )
    ci = (test.get("ci") or {}).get("auroc") or {}
    if ci.get("low") is not None and ci.get("high") is not None and ci["high"] - ci["low"] > 0.1:
        out.append(f"test AUROC CI [{ci['low']:.3f}, {ci['high']:.3f}] is wide")
    if body.get("calibration") is None:
        out.append("probabilities are not calibrated (no temperature in the checkpoint)")
    if body.get("conformal") is None:
        out.append("no conformal prediction sets (none fitted)")
    out.append(
        "trained on one data source; performance on other sites, devices or populations is unknown"
    )
    out.append(
        "inputs are read as the training data was; other acquisition settings may shift predictions"
    )
    return out
