"""A study's predictions as a DICOM Structured Report (TID 1500 Measurement Report, highdicom).

One measurement group per scored image instance: its tracking identifier, the algorithm (model
name, medmodal version, checkpoint and model-card SHA-256, threshold), the probability of each
class (unit UCUM "1"), the predicted class and the conformal prediction set as coded evaluations,
and references to the source instance. The observer is a device (the model). Patient and study
come from the source instances, so the PACS files the report with them. Class codes use the
private scheme ``99MEDMODAL`` (there is no standard code for a checkpoint's classes).
:func:`read_sr` reads such a report back; :func:`validate_sr` checks it with highdicom and, when
installed, ``dciodvfy`` (dicom3tools).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from medmodal import __version__
from medmodal.hospital.study import StudyPrediction

SCHEME = "99MEDMODAL"
UNIT = hd.sr.CodedConcept("1", "UCUM", "no units")
PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging")
PREDICTED = hd.sr.CodedConcept("PREDICTED", SCHEME, "Predicted class")
IN_SET = hd.sr.CodedConcept("PREDSET", SCHEME, "Conformal prediction set member")
SR_SERIES_NUMBER = 9901


@dataclass(frozen=True)
class ModelIdentity:
    """Who made the report: served name, checkpoint and card digests, decision threshold."""

    name: str
    checkpoint_sha256: str
    card_sha256: str
    threshold: float | None
    calibrated: bool

    @classmethod
    def of(cls, card: dict[str, Any]) -> ModelIdentity:
        text = json.dumps(card, sort_keys=True, separators=(",", ":"), default=str)
        return cls(
            name=str(card["name"]),
            checkpoint_sha256=str(card["checkpoint"]["sha256"]),
            card_sha256=hashlib.sha256(text.encode()).hexdigest(),
            threshold=card.get("threshold"),
            calibrated=card.get("calibration", {}).get("available", False) is True,
        )

    def algorithm(self) -> hd.sr.AlgorithmIdentification:
        params = [
            f"checkpoint sha256 {self.checkpoint_sha256}",
            f"model card sha256 {self.card_sha256}",
        ]
        if self.threshold is not None:
            params.append(f"decision threshold p > {self.threshold:g}")
        return hd.sr.AlgorithmIdentification(
            name=f"medmodal {self.name}",
            version=__version__,
            parameters=params,
            manufacturer="medmodal",
        )

    def device_uid(self) -> str:
        return "2.25." + str(int(self.card_sha256[:32], 16))


def class_code(name: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(name[:64], SCHEME, name[:64])


def probability_code(name: str, calibrated: bool = False) -> hd.sr.CodedConcept:
    if calibrated:
        return hd.sr.CodedConcept(
            f"CP:{name}"[:64], SCHEME, f"Calibrated probability of {name}"[:64]
        )
    return hd.sr.CodedConcept(f"P:{name}"[:64], SCHEME, f"Probability of {name}"[:64])


def build_sr(
    pred: StudyPrediction, model: ModelIdentity, series_number: int = SR_SERIES_NUMBER
) -> Dataset:
    """The Comprehensive 3D SR of ``pred`` (one group per scored instance)."""
    algorithm = model.algorithm()
    groups = [
        _group(r.source, r.output, i, model, algorithm) for i, r in enumerate(pred.results, 1)
    ]
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=model.device_uid(),
        name=f"medmodal {model.name}"[:64],
        manufacturer_name="medmodal",
        model_name=model.name[:64],
        serial_number=model.checkpoint_sha256[:16],
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=context, procedure_reported=PROCEDURE, imaging_measurements=groups
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[r.source for r in pred.results],
        content=report[0],
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="medmodal",
        series_description=f"medmodal {model.name}: AI result, not verified"[:64],
        is_complete=True,
    )


def _group(
    src: Dataset, out: dict[str, Any], n: int, model: ModelIdentity, algorithm: Any
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    ref = hd.sr.SourceImageForMeasurement.from_source_image(src)
    measurements = [
        hd.sr.Measurement(
            probability_code(c), float(p), UNIT, algorithm_id=algorithm, referenced_images=[ref]
        )
        for c, p in out["probabilities"].items()
    ]
    for c, p in (out.get("calibrated_probabilities") or {}).items():
        measurements.append(
            hd.sr.Measurement(
                probability_code(c, True),
                float(p),
                UNIT,
                algorithm_id=algorithm,
                referenced_images=[ref],
            )
        )
    predicted = out["prediction"] if isinstance(out["prediction"], list) else [out["prediction"]]
    evaluations = [hd.sr.QualitativeEvaluation(PREDICTED, class_code(c)) for c in predicted]
    evaluations += [
        hd.sr.QualitativeEvaluation(IN_SET, class_code(c)) for c in out.get("prediction_set") or []
    ]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier=f"medmodal {model.name} image {n}"[:64]
        ),
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(src)],
    )


def read_sr(ds: Dataset) -> dict[str, Any]:
    """A medmodal SR back as plain values: per group, the source instance, probabilities,
    calibrated probabilities, predicted classes, prediction set; the algorithm's fields."""
    sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    report = sr.content
    groups = []
    for g in report.get_image_measurement_groups():
        probs, calibrated = {}, {}
        for m in g.get_measurements():
            code = m.name.value
            target = calibrated if code.startswith("CP:") else probs
            target[m.name.meaning.split(" of ", 1)[1]] = float(m.value)
        evals = g.get_qualitative_evaluations()
        groups.append(
            {
                "tracking": g.tracking_identifier,
                "source_sop_instance_uid": g.source_images[0].referenced_sop_instance_uid,
                "probabilities": probs,
                "calibrated_probabilities": calibrated or None,
                "prediction": [e.value.meaning for e in evals if e.name == PREDICTED],
                "prediction_set": [e.value.meaning for e in evals if e.name == IN_SET] or None,
                "algorithm": _algorithm(g),
            }
        )
    return {
        "study": str(ds.StudyInstanceUID),
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "groups": groups,
    }


ALGORITHM_ITEMS = {"111001": "name", "111003": "version", "122405": "manufacturer"}


def _algorithm(group: Any) -> dict[str, Any]:
    """The group's Algorithm Identification (TID 4019) items: name, version, parameters."""
    out: dict[str, Any] = {"parameters": []}
    for item in group[0].ContentSequence:
        name = item.ConceptNameCodeSequence[0]
        if name.CodingSchemeDesignator != "DCM" or item.ValueType != "TEXT":
            continue
        if name.CodeValue == "111002":
            out["parameters"].append(str(item.TextValue))
        elif name.CodeValue in ALGORITHM_ITEMS:
            out[ALGORITHM_ITEMS[name.CodeValue]] = str(item.TextValue)
    return out


def dciodvfy(ds: Dataset) -> list[str] | None:
    """dicom3tools' ``dciodvfy`` errors for ``ds`` (None when it is not installed)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory(prefix="medmodal-sr-") as tmp:
        path = Path(tmp) / "sr.dcm"
        ds.save_as(path, enforce_file_format=True)
        run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    return [line.strip() for line in lines if line.strip().startswith("Error")]


def validate_sr(ds: Dataset) -> dict[str, Any]:
    """highdicom re-reads the SR (content tree, templates) and dciodvfy checks the IOD when
    installed: ``{"highdicom": "ok" | error, "dciodvfy": [errors] | None, "groups": n}``."""
    try:
        groups = len(read_sr(ds)["groups"])
        verdict: str = "ok"
    except Exception as exc:  # highdicom raises ValueError / TypeError / AttributeError
        groups, verdict = 0, f"{type(exc).__name__}: {exc}"
    return {"highdicom": verdict, "dciodvfy": dciodvfy(ds), "groups": groups}
