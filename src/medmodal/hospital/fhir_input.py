"""A FHIR ``Bundle`` (Patient, Observations, DocumentReference / Media / Binary) as a checkpoint's
inputs, by a declared mapping (YAML or JSON), e.g. for the covid_cxr model::

    note: {resource: DocumentReference}                   # the first text attachment
    image: {resource: Media}                              # an attached PNG / JPEG / DICOM
    record:                                               # one source per record column
      age: {resource: Observation, code: "30525-0"}       # LOINC age; valueQuantity.value
      sex: {resource: Patient, field: gender, values: {male: M, female: F}}
      temperature: {resource: Observation, code: "8310-5"}

The result is the service's multipart parts (:class:`medmodal.serve.limits.Part`), so a bundle goes
through exactly the upload path: DICOM attachments de-identified, record fields checked, digests.
A mapping key that is not an input of the checkpoint, or a misspelled option, is a ConfigError.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from medmodal.errors import ConfigError, DataError
from medmodal.hospital.fhir import FhirError, validate
from medmodal.options import Strict, parse_options
from medmodal.predictor import Predictor
from medmodal.serve.limits import Part


class AttachmentSource(Strict):
    """A note, image, sound or signal: the first matching resource's attachment."""

    resource: Literal["DocumentReference", "Media", "Binary"]
    code: str | None = None  # DocumentReference.type / Media.type coding code to match


class FieldSource(Strict):
    """One record column: a Patient field, or the value of the Observation with this code."""

    resource: Literal["Patient", "Observation"]
    field: Literal["gender", "birthDate", "age"] | None = None
    code: str | None = None
    values: dict[str, str | float] = Field(default_factory=dict)  # FHIR value -> manifest value


def read_mapping(source: str | Path | dict[str, Any], predictor: Predictor) -> dict[str, Any]:
    """Checked mapping: {modality: AttachmentSource | {column: FieldSource}}."""
    raw = source if isinstance(source, dict) else yaml.safe_load(Path(source).read_text()) or {}
    mods = predictor.schema.modalities
    out: dict[str, Any] = {}
    for name, spec in raw.items():
        if name not in mods:
            raise ConfigError(
                f"FHIR mapping: {name!r} is not an input of the model; inputs: {', '.join(mods)}"
            )
        if mods[name].type == "tabular":
            columns = mods[name].input_columns()
            unknown = sorted(set(spec) - set(columns))
            if unknown:
                raise ConfigError(
                    f"FHIR mapping: {name}.{unknown[0]} is not a column; columns: {', '.join(columns)}"
                )
            out[name] = {
                c: _field(parse_options(FieldSource, s, f"{name}.{c}"), f"{name}.{c}")
                for c, s in spec.items()
            }
        else:
            out[name] = parse_options(AttachmentSource, spec, name)
    return out


def _field(src: FieldSource, where: str) -> FieldSource:
    if src.resource == "Patient" and src.field is None:
        raise ConfigError(
            f"FHIR mapping: {where}: a Patient source needs field: gender | birthDate | age"
        )
    if src.resource == "Observation" and not src.code:
        raise ConfigError(f"FHIR mapping: {where}: an Observation source needs its code")
    return src


def bundle_parts(bundle: dict[str, Any], mapping: dict[str, Any]) -> dict[str, Part]:
    """The multipart parts the bundle gives (inputs it lacks are absent, as in an upload)."""
    try:
        validate(bundle)
    except FhirError as exc:
        raise DataError(str(exc), modality="bundle") from None
    if bundle.get("resourceType") != "Bundle":
        raise DataError(
            f"expected a FHIR Bundle, got {bundle.get('resourceType')}", modality="bundle"
        )
    resources = [e.get("resource") or {} for e in bundle.get("entry", [])]
    as_of = _as_of(bundle)
    parts: dict[str, Part] = {}
    for name, src in mapping.items():
        if isinstance(src, AttachmentSource):
            data = _attachment(resources, src, name)
            if data is not None:
                parts[name] = Part(data, f"{name}.bin")
        else:
            fields = {c: _value(resources, f, as_of) for c, f in src.items()}
            fields = {c: v for c, v in fields.items() if v is not None}
            if fields:
                parts[name] = Part(json.dumps(fields).encode(), None)
    return parts


def _as_of(bundle: dict[str, Any]) -> date:
    stamp = str(bundle.get("timestamp") or "")[:10]
    try:
        return date.fromisoformat(stamp)
    except ValueError:
        return date.today()


def _matches(res: dict[str, Any], kind: str, code: str | None) -> bool:
    if res.get("resourceType") != kind:
        return False
    if code is None:
        return True
    concept = res.get("type") or res.get("code") or {}
    return any(c.get("code") == code for c in concept.get("coding", []))


def _attachment(resources: list[dict[str, Any]], src: AttachmentSource, name: str) -> bytes | None:
    for res in resources:
        if not _matches(res, src.resource, src.code):
            continue
        if src.resource == "Binary":
            encoded = res.get("data")
        elif src.resource == "Media":
            encoded = (res.get("content") or {}).get("data")
        else:
            encoded = next(
                (
                    c["attachment"].get("data")
                    for c in res.get("content", [])
                    if c.get("attachment")
                ),
                None,
            )
        if encoded:
            try:
                return base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise DataError(f"{src.resource} attachment is not base64", modality=name) from None
    return None


def _value(resources: list[dict[str, Any]], src: FieldSource, as_of: date) -> Any:
    if src.resource == "Patient":
        patient = next((r for r in resources if r.get("resourceType") == "Patient"), None)
        value = None if patient is None else _patient_field(patient, src.field, as_of)
    else:
        obs = next((r for r in resources if _matches(r, "Observation", src.code)), None)
        value = None if obs is None else _observation_value(obs)
    if value is not None and str(value) in src.values:
        return src.values[str(value)]
    return value


def _patient_field(patient: dict[str, Any], field: str | None, as_of: date) -> Any:
    if field == "gender":
        return patient.get("gender")
    born = patient.get("birthDate")
    if field == "birthDate" or born is None:
        return born
    parts = [int(x) for x in str(born)[:10].split("-")]  # YYYY, YYYY-MM or YYYY-MM-DD
    y, m, d = (parts + [7, 1][len(parts) - 1 :])[:3] if len(parts) < 3 else parts
    return as_of.year - y - ((as_of.month, as_of.day) < (m, d))


def _observation_value(obs: dict[str, Any]) -> Any:
    if "valueQuantity" in obs:
        return obs["valueQuantity"].get("value")
    if "valueCodeableConcept" in obs:
        codings = obs["valueCodeableConcept"].get("coding") or [{}]
        return codings[0].get("code") or obs["valueCodeableConcept"].get("text")
    for key in ("valueString", "valueBoolean", "valueInteger"):
        if key in obs:
            return obs[key]
    return None
