"""One study end to end: fetch -> de-identify -> predict -> SR -> store, timed per stage, with the
service's audit entries (one hash-chained line per scored instance: caller, model, digest of the
de-identified input, prediction and probabilities; never an identifier or a pixel)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from medmodal.hospital.dicomweb import Pacs
from medmodal.hospital.sr import ModelIdentity, build_sr
from medmodal.hospital.study import StudyPrediction, predict_study
from medmodal.serve.audit_log import AuditLog
from medmodal.serve.inference import ModelEntry

Store = Callable[[list[Dataset]], None]


@dataclass
class StudyOutcome:
    """The prediction, the SR made of it, whether it was stored, the audit head after it."""

    prediction: StudyPrediction
    sr: Dataset
    stored: bool
    audit_head: str | None = None
    heatmaps: list[Dataset] = field(default_factory=list)  # Secondary Captures (explain=True)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: model, modality, per-instance outputs (by SOP instance UID), SR UID,
        skipped instances, seconds per stage."""
        p = self.prediction
        return {
            "model": p.model,
            "modality": p.modality,
            "instances": [
                {
                    "sop_instance_uid": str(r.source.SOPInstanceUID),
                    **r.output,
                    "input_digest": r.digest,
                }
                for r in p.results
            ],
            "skipped": p.skipped,
            "sr": {"sop_instance_uid": str(self.sr.SOPInstanceUID), "stored": self.stored},
            "heatmaps": [str(d.SOPInstanceUID) for d in self.heatmaps],
            "seconds": {k: round(v, 4) for k, v in p.timings.items()},
            "audit": self.audit_head,
        }


def run_study(
    entry: ModelEntry,
    datasets: list[Dataset],
    *,
    store: Store | None = None,
    audit: AuditLog | None = None,
    caller: str = "pacs",
    modality: str | None = None,
    fetch_seconds: float = 0.0,
    explain: bool = False,
) -> StudyOutcome:
    """Predict every image instance of one study, make the SR (and with ``explain`` the heat
    maps as Secondary Captures), store them when ``store`` is given."""
    pred = predict_study(entry, datasets, modality, fetch_seconds)
    with pred.timed("sr"):
        sr = build_sr(pred, ModelIdentity.of(entry.card))
    heatmaps = _heatmaps(entry, pred) if explain else []
    if store is not None:
        with pred.timed("store"):
            store([sr, *heatmaps])
    head = None
    if audit is not None:
        for r in pred.results:
            summary = {
                "prediction": r.output["prediction"],
                "probabilities": r.output["probabilities"],
            }
            head = audit.append(
                token=caller, model=entry.name, inputs={pred.modality: r.digest}, output=summary
            )
    return StudyOutcome(pred, sr, store is not None, head, heatmaps)


def _heatmaps(entry: ModelEntry, pred: StudyPrediction) -> list[Dataset]:
    from pydicom.uid import generate_uid

    from medmodal.hospital.heatmap import explanation_sc

    series, out = generate_uid(), []
    with pred.timed("explain"):
        for i, r in enumerate(pred.results, 1):
            sc = explanation_sc(entry, r, series, i)
            if sc is not None:
                out.append(sc)
    return out


def run_dicomweb_study(
    entry: ModelEntry,
    pacs: Pacs,
    study_uid: str,
    *,
    store_sr: bool = True,
    audit: AuditLog | None = None,
    caller: str = "dicomweb",
    modality: str | None = None,
    explain: bool = False,
) -> StudyOutcome:
    """WADO-RS fetch of ``study_uid``, prediction, SR (+ heat maps) back by STOW-RS."""
    start = time.perf_counter()
    datasets = pacs.fetch_study(study_uid)
    fetched = time.perf_counter() - start
    return run_study(
        entry,
        datasets,
        store=pacs.store if store_sr else None,
        audit=audit,
        caller=caller,
        modality=modality,
        fetch_seconds=fetched,
        explain=explain,
    )
