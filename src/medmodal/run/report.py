"""The HTML report of a run, a cross-validation or an evaluation: notes as sentences, tables as
tables (never a Python dict pasted into the page)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmodal.config import ExperimentConfig
from medmodal.data.dataset import MultimodalDataset
from medmodal.data.manifest import LabelMap
from medmodal.evaluate import write_report


def positive_note(label_map: LabelMap, threshold: float) -> str | None:
    if label_map.task != "binary":
        return None
    neg, pos = label_map.classes
    return (
        f"The positive class is {pos!r} (the other class is {neg!r}): sensitivity, PPV, "
        f"specificity, NPV and the ROC / PR curves are of {pos!r}, and a sample is called "
        f"{pos!r} when its probability is above {threshold:g}."
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


def write_run_report(
    path: Path,
    cfg: ExperimentConfig,
    ds: MultimodalDataset,
    probs: np.ndarray,
    metrics: Mapping[str, Any],
    label_map: LabelMap,
    bad: Sequence[Mapping[str, Any]],
    notes: Sequence[str | None],
    tables: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> Path:
    """One self-contained report for these predictions (with the ablation table if present)."""
    extra = dict(tables or {})
    if metrics.get("ablation"):
        what = "Harrell's C" if label_map.task == "survival" else "AUROC"
        extra[f"{what} with one modality removed at test time"] = ablation_rows(metrics["ablation"])
    return write_report(
        path,
        title=f"medmodal: {cfg.name}",
        metrics=metrics,
        y_true=np.asarray(ds.labels),
        y_prob=probs,
        task=label_map.task,
        class_names=label_map.classes,
        ci=metrics.get("ci"),
        config=cfg.to_dict(),
        bad_samples=list(bad),
        notes=[n for n in [positive_note(label_map, cfg.evaluate.threshold), *notes] if n],
        extra_tables=extra or None,
        times=label_map.times,
        sample_ids=ds.ids,
    )
