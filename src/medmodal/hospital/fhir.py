"""A prediction as HL7 FHIR R4 resources: a ``Bundle`` (collection) holding a ``DiagnosticReport``
whose results are ``Observation``s (the probability of each class, the predicted class, the
conformal prediction set), a ``RiskAssessment`` (every class with its probability) and the model as
a ``Device`` (name, medmodal version, checkpoint SHA-256). Status ``preliminary``: an AI output no
clinician has verified. Every resource is validated with ``fhir.resources`` (its R4B models: R4 with
technical corrections; these five resources did not change) before it is returned.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from medmodal import __version__
from medmodal.errors import MedmodalError

CLASS_SYSTEM = "urn:medmodal:class"
UCUM = "http://unitsofmeasure.org"
DICOM_UID = "urn:dicom:uid"
MEDIA_TYPE = "application/fhir+json"


class FhirError(MedmodalError):
    """A FHIR resource medmodal made or was given does not validate."""


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _class(name: str, display: str | None = None) -> dict[str, Any]:
    return {
        "coding": [{"system": CLASS_SYSTEM, "code": name, "display": display or name}],
        "text": display or name,
    }


def device_resource(card: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Device",
        "status": "active",
        "manufacturer": "medmodal",
        "deviceName": [{"name": f"medmodal {card['name']}", "type": "model-name"}],
        "version": [{"value": __version__}],
        "identifier": [
            {"system": "urn:medmodal:checkpoint-sha256", "value": card["checkpoint"]["sha256"]}
        ],
        "note": [{"text": card.get("intended_use", "")}],
    }


def _observation(
    code: dict[str, Any], subject: dict[str, Any], device: str, when: str, **value: Any
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "preliminary",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "imaging",
                    }
                ]
            }
        ],
        "code": code,
        "subject": subject,
        "effectiveDateTime": when,
        "device": {"reference": device},
        **value,
    }


def observations(
    out: dict[str, Any], subject: dict[str, Any], device: str, when: str
) -> list[dict[str, Any]]:
    """One Observation per class probability (calibrated when the model has it), one for the
    prediction, one for the prediction set when there is one."""
    probs = out.get("calibrated_probabilities") or out["probabilities"]
    obs = [
        _observation(
            _class(c, f"Probability of {c}"),
            subject,
            device,
            when,
            valueQuantity={"value": float(p), "unit": "probability", "system": UCUM, "code": "1"},
        )
        for c, p in probs.items()
    ]
    predicted = out["prediction"] if isinstance(out["prediction"], list) else [out["prediction"]]
    obs.append(
        _observation(
            {"text": "Predicted class"},
            subject,
            device,
            when,
            valueCodeableConcept={
                "coding": [c for p in predicted for c in _class(p)["coding"]],
                "text": ", ".join(predicted) or "none",
            },
        )
    )
    if out.get("prediction_set") is not None:
        members = ", ".join(out["prediction_set"])
        obs.append(
            _observation(
                {"text": "Conformal prediction set"},
                subject,
                device,
                when,
                valueString="{" + members + "}",
            )
        )
    return obs


def risk_assessment(
    out: dict[str, Any], subject: dict[str, Any], device: str, basis: list[str], when: str
) -> dict[str, Any]:
    probs = out.get("calibrated_probabilities") or out["probabilities"]
    return {
        "resourceType": "RiskAssessment",
        "status": "preliminary",
        "subject": subject,
        "occurrenceDateTime": when,
        "performer": {"reference": device},
        "basis": [{"reference": b} for b in basis],
        "prediction": [
            {"outcome": _class(c), "probabilityDecimal": float(p)} for c, p in probs.items()
        ],
    }


def report_bundle(
    result: dict[str, Any],
    card: dict[str, Any],
    subject: dict[str, Any] | None = None,
    study_uid: str | None = None,
) -> dict[str, Any]:
    """``result``: the service's prediction (probabilities, calibrated probabilities, prediction,
    prediction set); ``subject``: a Reference (default: a de-identified subject, by display)."""
    subject = subject or {"display": "de-identified subject"}
    when = datetime.now(UTC).isoformat(timespec="seconds")
    device_url = _urn()
    obs = observations(result, subject, device_url, when)
    obs_urls = [_urn() for _ in obs]
    risk = risk_assessment(result, subject, device_url, obs_urls, when)
    report = diagnostic_report(result, card, subject, obs_urls, when, study_uid)
    entries = [(_urn(), report), (device_url, device_resource(card)), (_urn(), risk)]
    entries += list(zip(obs_urls, obs, strict=True))
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": when,
        "entry": [{"fullUrl": url, "resource": res} for url, res in entries],
    }
    validate(bundle)
    return bundle


def diagnostic_report(
    out: dict[str, Any],
    card: dict[str, Any],
    subject: dict[str, Any],
    results: list[str],
    when: str,
    study_uid: str | None,
) -> dict[str, Any]:
    predicted = out["prediction"] if isinstance(out["prediction"], list) else [out["prediction"]]
    conclusion = f"medmodal {card['name']} predicts {', '.join(predicted) or 'no class'}"
    if card.get("threshold") is not None and card.get("positive_class"):
        conclusion += f" (positive class {card['positive_class']} when p > {card['threshold']:g})"
    if out.get("prediction_set") is not None:
        conclusion += "; prediction set {" + ", ".join(out["prediction_set"]) + "}"
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "status": "preliminary",
        "code": {"text": f"medmodal {card['name']} prediction"},
        "subject": subject,
        "effectiveDateTime": when,
        "issued": when,
        "result": [{"reference": r} for r in results],
        "conclusion": conclusion + ". AI output, not verified by a clinician.",
        "conclusionCode": [_class(p) for p in predicted],
    }
    if study_uid:
        report["imagingStudy"] = [
            {"identifier": {"system": DICOM_UID, "value": f"urn:oid:{study_uid}"}}
        ]
    return report


def resource_class(name: str) -> Any:
    import importlib

    module = importlib.import_module(f"fhir.resources.R4B.{name.lower()}")
    return getattr(module, name)


def validate(resource: dict[str, Any]) -> None:
    """Validate a resource (a Bundle: every entry too) with fhir.resources; FhirError if not."""
    kind = resource.get("resourceType")
    if not isinstance(kind, str) or not kind.isalpha():
        raise FhirError(f"not a FHIR resource (resourceType {kind!r})")
    try:
        resource_class(kind).model_validate(resource)
        for entry in resource.get("entry", []) if kind == "Bundle" else []:
            sub = entry.get("resource") or {}
            resource_class(str(sub.get("resourceType"))).model_validate(sub)
    except (ImportError, AttributeError):
        raise FhirError(f"unknown FHIR resource type {kind!r}") from None
    except Exception as exc:  # pydantic ValidationError and fhir-core's own errors
        first = str(exc).splitlines()
        raise FhirError(f"invalid FHIR {kind}: {' '.join(first[:3])}") from None
