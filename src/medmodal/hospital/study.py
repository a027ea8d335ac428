"""A study's instances -> one prediction per image instance, through the service's own steps.

Each image instance is serialised, de-identified in memory (:func:`medmodal.serve.deid.
deidentify_bytes`, exactly as an upload), read by the checkpoint's image processor and scored
in one batch by the served model (:class:`medmodal.serve.inference.ModelEntry`). The original
headers are kept aside for the report only: a DICOM SR must name the study and the instances it
describes so that the PACS files it with them; the model and the audit log see de-identified
bytes only.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pydicom import dcmwrite
from pydicom.dataset import Dataset

from medmodal.data.readers.blob import Blob
from medmodal.errors import ConfigError, DataError
from medmodal.serve.deid import deidentify_bytes
from medmodal.serve.inference import ModelEntry, Prepared

NOT_IMAGES = {"SR", "KO", "PR", "SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "DOC", "ECG"}
STAGES = ("fetch", "deidentify", "predict", "sr", "store")


@dataclass
class InstanceResult:
    """One scored instance: its original header, the model's output, the de-identified digest."""

    source: Dataset = field(repr=False)
    output: dict[str, Any]
    digest: str
    prepared: Prepared = field(repr=False)  # the de-identified input, as read and scored


@dataclass
class StudyPrediction:
    """What one model said about the image instances of one study (+ seconds per stage)."""

    model: str
    modality: str
    results: list[InstanceResult]
    skipped: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start


def image_modality(entry: ModelEntry, modality: str | None = None) -> str:
    """The checkpoint's image modality a DICOM study feeds (``modality`` when it has several)."""
    mods = entry.predictor.schema.modalities
    images = [m for m, spec in mods.items() if spec.type == "image"]
    if modality is not None:
        if modality not in images:
            raise ConfigError(
                f"modality {modality!r} is not an image input of {entry.name}; "
                f"its image inputs: {', '.join(images) or 'none'}"
            )
        return modality
    if len(images) != 1:
        what = ", ".join(images) if images else "none"
        raise ConfigError(f"{entry.name} has {len(images)} image inputs ({what}): name one")
    return images[0]


def image_instances(datasets: list[Dataset]) -> list[Dataset]:
    """Instances holding an image, ordered by series then instance number."""
    images = [
        ds
        for ds in datasets
        if "PixelData" in ds and str(ds.get("Modality", "")).upper() not in NOT_IMAGES
    ]
    return sorted(
        images, key=lambda ds: (_int(ds.get("SeriesNumber")), _int(ds.get("InstanceNumber")))
    )


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def part10_bytes(ds: Dataset) -> bytes:
    """The dataset as a DICOM file (preamble, meta) in memory."""
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def predict_study(
    entry: ModelEntry,
    datasets: list[Dataset],
    modality: str | None = None,
    fetch_seconds: float = 0.0,
) -> StudyPrediction:
    """Score every image instance of ``datasets`` (one study); a DataError when none can be."""
    mod = image_modality(entry, modality)
    column = entry.predictor.schema.modalities[mod].column
    assert column is not None
    pred = StudyPrediction(entry.name, mod, [], timings={"fetch": fetch_seconds})
    kept: list[tuple[Dataset, Prepared, str]] = []
    for ds in image_instances(datasets):
        with pred.timed("deidentify"):
            try:
                clean = deidentify_bytes(part10_bytes(ds), mod)
            except DataError as exc:
                pred.skipped.append(f"instance {ds.get('InstanceNumber', '?')}: {exc.reason}")
                continue
        with pred.timed("predict"):  # reading the pixels is part of predicting
            try:  # read once: the heat map explains the same Sample
                got = entry.predictor.read_sample({column: Blob(clean, mod)}, sample_id="input")
            except DataError as exc:
                pred.skipped.append(f"instance {ds.get('InstanceNumber', '?')}: {exc.reason}")
                continue
        prepared = Prepared(got.sample, {}, got.row, got.raws)
        kept.append((ds, prepared, hashlib.sha256(clean).hexdigest()))
    if not kept:
        why = "; ".join(pred.skipped[:3]) or "the study holds no image instance"
        raise DataError(f"no image of the study could be used: {why}", modality=mod)
    with pred.timed("predict"):
        outputs = entry.run_batch([k[1].sample for k in kept])
    pred.results = [
        InstanceResult(ds, out, d, p) for (ds, p, d), out in zip(kept, outputs, strict=True)
    ]
    return pred
