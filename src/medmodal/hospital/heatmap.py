"""The explanation heat map of a predicted instance as a DICOM Secondary Capture (highdicom):
the service's overlay PNG (:func:`medmodal.serve.explain.explain_one`) as an RGB image in the
source's study, so the PACS viewer shows it beside the X-ray. None when no explanation fits."""

from __future__ import annotations

import base64
import io
from typing import Any

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medmodal.hospital.study import InstanceResult
from medmodal.serve.explain import explain_one
from medmodal.serve.inference import ModelEntry

SC_SERIES_NUMBER = 9902


def target_probs(out: dict[str, Any]) -> list[float]:
    """What ``explain_one`` takes: the positive class's probability (binary), else all."""
    probs = out["calibrated_probabilities"] or out["probabilities"]
    values = list(probs.values())
    return values[-1:] if len(values) == 2 else values


def explanation_sc(
    entry: ModelEntry, result: InstanceResult, series_uid: str, number: int
) -> Dataset | None:
    """The overlay of one scored instance (explained from the Sample it was scored on) as a
    Secondary Capture referencing the source's study, or None."""
    source = result.source
    ex = explain_one(entry.predictor, result.prepared, target_probs(result.output))
    if not ex.get("available"):
        return None
    rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(ex["png_base64"]))).convert("RGB"))
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=np.ascontiguousarray(rgb),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_uid,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=number,
        manufacturer="medmodal",
        patient_orientation=("L", "F"),
    )
    sc.SeriesDescription = f"medmodal {entry.name}: {ex['method']} (AI, not verified)"[:64]
    return sc
