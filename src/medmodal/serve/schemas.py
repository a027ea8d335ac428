"""OpenAPI shapes of the service: responses, errors and the multipart request body."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from medmodal.serve.inference import ModelEntry


class Error(BaseModel):
    detail: Any
    part: str | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "malformed request"},
    401: {"model": Error, "description": "missing or wrong bearer token"},
    404: {"model": Error, "description": "no such model"},
    408: {"model": Error, "description": "the request body did not arrive in time"},
    413: {
        "model": Error,
        "description": "body larger than the upload limit, or a part that "
        "would decode beyond the size limits (the detail names it)",
    },
    415: {"model": Error, "description": "not multipart/form-data"},
    422: {
        "model": Error,
        "description": "a part cannot be used, or no part held any input (the detail names it)",
    },
    503: {
        "model": Error,
        "description": "busy (retry after the Retry-After seconds) or the prediction timed out",
    },
}


class Modalities(BaseModel):
    used: list[str]
    missing: list[str]
    empty: list[str] = []


class Prediction(BaseModel):
    """A prediction with its uncertainty."""

    model_config = ConfigDict(extra="allow")
    model: str
    runtime: str
    task: str
    classes: list[str]
    positive_class: str | None
    threshold: float
    probabilities: dict[str, float]
    calibrated_probabilities: dict[str, float] | None
    prediction: str | list[str]
    prediction_set: list[str] | None
    calibration: str
    conformal: str
    modalities: Modalities
    explanation: dict[str, Any]
    input_digests: dict[str, str]
    audit: str | None = None


class Card(BaseModel):
    """A model card (see medmodal.serve.card)."""

    model_config = ConfigDict(extra="allow")
    name: str
    task: str | None
    classes: list[str] | None
    training_data: dict[str, Any]
    intended_use: str
    metrics: dict[str, Any]
    known_limits: list[str]
    versions: dict[str, Any]


class ModelList(BaseModel):
    models: list[Card]


def multipart_body(models: dict[str, ModelEntry]) -> dict[str, Any]:
    """The request body of predict: one optional part per modality of the served models."""
    props: dict[str, Any] = {}
    for entry in models.values():
        for m, spec in entry.predictor.schema.modalities.items():
            if spec.type == "signal":
                props[f"{m}.leads"] = {
                    "type": "string",
                    "description": f"lead names of a .npy {m}, in its order (e.g. MLII,V5)",
                }
                props[f"{m}.fs"] = {"type": "string", "description": f"sampling rate of {m}, Hz"}
            if spec.type == "tabular":
                props[m] = {"type": "string", "description": "record fields as a JSON object"}
            elif spec.type == "text":
                props[m] = {"type": "string", "description": "the clinical note (text)"}
            else:
                props[m] = {
                    "type": "string",
                    "format": "binary",
                    "description": f"{spec.type} file",
                }
    schema = {"type": "object", "properties": props}
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    }
