"""One served model: uploads -> a Sample (through the Predictor's processors) -> micro-batched
logits (PyTorch or ONNX Runtime) -> probabilities, calibrated probabilities, prediction set.

The probability and decision steps are the Predictor's (``probs_from_logits``, ``decide``); a
checkpoint that carries a temperature or a conformal fit (``probs_from_logits`` /
``prediction_sets``) surfaces them, others say they have none. Survival checkpoints are not
served (a ConfigError when the model is loaded).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmodal.checkpoint import read_checkpoint
from medmodal.data.readers.blob import Blob
from medmodal.errors import ConfigError, DataError
from medmodal.predictor import Predictor
from medmodal.serve.batching import MicroBatcher
from medmodal.serve.card import model_card
from medmodal.serve.deid import deidentify_bytes, is_dicom
from medmodal.serve.limits import BadRequest, Part

HEAVY = ("text", "audio", "signal")  # reading these takes milliseconds: done off the event loop


@dataclass
class Prepared:
    """A request's inputs: the Sample, SHA-256 per part (after de-identification), the row."""

    sample: dict[str, Any]
    digests: dict[str, str]
    row: dict[str, Any] = field(repr=False)


class ModelEntry:
    """A loaded checkpoint with its card, runtime and micro-batcher."""

    def __init__(
        self,
        name: str,
        checkpoint: str | Path,
        runtime: str = "pytorch",
        onnx_path: str | Path | None = None,
        max_batch: int = 64,
        max_wait: float = 0.002,
    ) -> None:
        path = Path(checkpoint)
        self.name = name
        self.predictor = Predictor.load(path, amp=runtime == "pytorch-bf16")
        if self.predictor.label_map.task == "survival":
            raise ConfigError(f"{path}: survival models are not served (use predict / whatif)")
        self.runtime = runtime
        self.session = None
        if runtime == "onnx":
            from medmodal.export.onnx import onnx_session

            self.session = onnx_session(onnx_path or path.with_suffix(".onnx"))
        self.card = model_card(name, read_checkpoint(path), path, runtime, self.predictor.eval_spec)
        types = [s.type for s in self.predictor.schema.modalities.values()]
        self.heavy = any(t in HEAVY for t in types)
        self.batcher = MicroBatcher(self.run_batch, max_batch=max_batch, max_wait=max_wait)

    # -- inputs -----------------------------------------------------------------------------
    def prepare(self, parts: dict[str, Part]) -> Prepared:
        """Parts -> Sample; every bad part is a BadRequest naming it (422)."""
        try:
            row, digests = parse_parts(self.predictor, parts)
            sample = self.predictor.sample(row, sample_id="input")
        except DataError as exc:
            part = exc.modality or "input"
            raise BadRequest(f"part {part!r}: {exc.reason}", part=part) from None
        except (ValueError, TypeError, KeyError) as exc:
            raise BadRequest(f"input cannot be used: {exc}") from None
        return Prepared(sample, digests, row)

    # -- model --------------------------------------------------------------------------------
    def logits(self, samples: list[dict[str, Any]]) -> torch.Tensor:
        if self.session is None:
            return self.predictor.sample_logits(samples)
        from medmodal.data.dataset import collate
        from medmodal.export.onnx import onnx_logits

        return onnx_logits(self.session, self.predictor, collate(samples))

    def run_batch(self, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The batcher's function: one model call for the batch, outputs per sample."""
        logits = self.logits(samples)
        ids = [s["id"] for s in samples]
        return outputs(self.predictor, logits, ids)

    async def predict(self, prepared: Prepared) -> dict[str, Any]:
        return await self.batcher.submit(prepared.sample)


def parse_parts(
    predictor: Predictor, parts: dict[str, Part]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Multipart parts -> a row of raw inputs (Blobs, record fields) and digests per part."""
    mods = predictor.schema.modalities
    unknown = sorted(set(parts) - set(mods))
    if unknown:
        raise BadRequest(
            f"part {unknown[0]!r} is not an input of this model; it takes: {', '.join(mods)}",
            part=unknown[0],
        )
    if not parts:
        raise BadRequest(f"no input: send at least one part of {', '.join(mods)}")
    row: dict[str, Any] = {}
    digests = {}
    for name, part in parts.items():
        spec = mods[name]
        data = part.data
        if spec.type == "tabular":
            row.update(record_fields(name, data, spec.input_columns()))
        else:
            if is_dicom(data):
                data = deidentify_bytes(data, name)  # before anything else sees it
            assert spec.column is not None
            row[spec.column] = Blob(data, name)
        digests[name] = hashlib.sha256(data).hexdigest()
    return row, digests


def record_fields(part: str, data: bytes, columns: list[str]) -> dict[str, Any]:
    """A JSON object of record fields; unknown fields and non-scalar values name the part."""
    try:
        fields = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(
            f"part {part!r}: record fields must be a JSON object ({exc})", part=part
        ) from None
    if not isinstance(fields, dict):
        raise BadRequest(f"part {part!r}: record fields must be a JSON object", part=part)
    unknown = sorted(set(fields) - set(columns))
    if unknown:
        raise BadRequest(
            f"part {part!r}: unknown field {unknown[0]!r}; fields: {', '.join(columns)}", part=part
        )
    for k, v in fields.items():
        if not (v is None or isinstance(v, str | int | float | bool)):
            raise BadRequest(
                f"part {part!r}: field {k!r} must be a number, text or null", part=part
            )
        if isinstance(v, float) and not math.isfinite(v):
            raise BadRequest(f"part {part!r}: field {k!r} is not finite", part=part)
    return {k: (np.nan if v is None else v) for k, v in fields.items()}


def outputs(predictor: Predictor, logits: torch.Tensor, ids: list[str]) -> list[dict[str, Any]]:
    """Per sample: probabilities, calibrated probabilities, prediction, prediction set."""
    task, classes = predictor.label_map.task, predictor.label_map.classes
    raw = predictor.probs_from_logits(logits, calibrated=False)
    calibrated = None
    if predictor.temperature is not None:
        calibrated = predictor.probs_from_logits(logits)
    used = raw if calibrated is None else calibrated
    predicted = predictor.decide(used)
    sets = predictor.prediction_sets(ids, used)
    out = []
    for i in range(len(ids)):
        out.append(
            {
                "probabilities": by_class(raw[i], task, classes),
                "calibrated_probabilities": None
                if calibrated is None
                else by_class(calibrated[i], task, classes),
                "prediction": names_of(predicted[i], task, classes),
                "prediction_set": None if sets is None else set_names(sets[i], classes),
            }
        )
    return out


def by_class(p: Any, task: str, classes: list[str]) -> dict[str, float]:
    if task == "binary":
        return {classes[0]: round(1 - float(p), 6), classes[1]: round(float(p), 6)}
    return {c: round(float(v), 6) for c, v in zip(classes, np.asarray(p).reshape(-1), strict=True)}


def names_of(pred: Any, task: str, classes: list[str]) -> str | list[str]:
    if task == "multilabel":
        return [c for c, v in zip(classes, np.asarray(pred).reshape(-1), strict=True) if v]
    return classes[int(pred)]


def set_names(row: Any, classes: list[str]) -> list[str] | Any:
    arr = np.asarray(row)
    if arr.dtype == bool and arr.shape == (len(classes),):
        return [c for c, v in zip(classes, arr, strict=True) if v]
    return arr.tolist()
