"""One served model: uploads -> a Sample (through the Predictor's processors) -> micro-batched
logits (PyTorch or ONNX Runtime) -> probabilities, calibrated probabilities, prediction set.

Inputs are read as :meth:`Predictor.sample <medmodal.predictor.Predictor.sample>` reads them (the
processors' ``read`` then ``transform``), keeping the raw reads for the explanation. Every failure
names its part: a decode limit is a 413, anything else a 422 (whatever the library raised), and
a request from which no modality could be read is a 422 that says so. The probability and
decision steps are the Predictor's (``probs_from_logits``, ``decide``); a checkpoint that carries
a temperature or a conformal fit surfaces them, others say they have none. Survival checkpoints
are not served (a ConfigError when the model is loaded).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmodal.checkpoint import read_checkpoint
from medmodal.data.readers.budget import DecodeLimitError
from medmodal.ensemble.build import is_composite
from medmodal.errors import ConfigError, DataError
from medmodal.predictor import Predictor
from medmodal.serve.batching import MicroBatcher
from medmodal.serve.card import model_card
from medmodal.serve.limits import BadRequest, Busy, Part
from medmodal.serve.parts import parse_parts

_ADDRESS = re.compile(r"<[^<>]*? at 0x[0-9a-fA-F]+>")


@dataclass
class Prepared:
    """A request's inputs: the Sample, SHA-256 per part (after de-identification), the full
    row of raw inputs, each modality's ``read`` output (None: absent) and the parts sent that
    held nothing (an empty note, a record of nulls)."""

    sample: dict[str, Any]
    digests: dict[str, str]
    row: dict[str, Any] = field(repr=False)
    raws: dict[str, Any] = field(default_factory=dict, repr=False)
    empty: list[str] = field(default_factory=list)


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
        allow_burned_in: bool = False,
    ) -> None:
        path = Path(checkpoint)
        self.name = name
        self.allow_burned_in = allow_burned_in
        self.predictor = Predictor.load(path, amp=runtime == "pytorch-bf16")
        if self.predictor.label_map.task == "survival":
            raise ConfigError(f"{path}: survival models are not served (use predict / whatif)")
        self.runtime = runtime
        self.session = None
        if runtime == "onnx":
            self.session = _session(self.predictor, Path(onnx_path or path.with_suffix(".onnx")))
        self.card = model_card(name, read_checkpoint(path), path, runtime, self.predictor.eval_spec)
        self.batcher = MicroBatcher(self.run_batch, max_batch=max_batch, max_wait=max_wait)

    # -- inputs -----------------------------------------------------------------------------
    def prepare(self, parts: dict[str, Part]) -> Prepared:
        """Parts -> Sample; every bad part is a BadRequest naming it (413 for a decode limit,
        else 422), and so is a request from which nothing could be read."""
        row, digests = parse_parts(self.predictor, parts, self.allow_burned_in)
        return self.prepare_row(row, digests, names=list(parts))

    def prepare_row(
        self, row: dict[str, Any], digests: dict[str, str] | None = None, names: Sequence[str] = ()
    ) -> Prepared:
        """A row of raw inputs (column -> value) -> Prepared (``names``: the parts sent)."""
        got = self.predictor.read_sample(row, read=_read, transform=_transform)
        sample, full, raws = got.sample, got.row, got.raws
        empty = [m for m in names if m in raws and raws[m] is None]
        if not any(sample["present"].values()):
            what = ", ".join(repr(m) for m in empty) or "none"
            raise BadRequest(
                f"no usable input: every part sent held nothing ({what}: an empty note, a "
                f"record of nulls); send at least one of {', '.join(self.predictor.processors)}",
                part=empty[0] if len(empty) == 1 else None,
            )
        return Prepared(sample, digests or {}, full, raws, empty)

    # -- model --------------------------------------------------------------------------------
    def logits(self, samples: list[dict[str, Any]]) -> torch.Tensor:
        if self.session is None:
            return self.predictor.sample_logits(samples)
        from medmodal.data.dataset import collate
        from medmodal.export.onnx import onnx_logits

        batch, model = collate(samples), self.predictor.model
        if is_composite(self.predictor.config.model):  # a classical learner's graph
            from medmodal.classical.onnx import classical_onnx_logits

            return classical_onnx_logits(model, self.session, batch["inputs"], batch["present"])
        return onnx_logits(self.session, self.predictor, batch)

    def run_batch(self, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The batcher's function: one model call for the batch, outputs per sample."""
        logits = self.logits(samples)
        ids = [s["id"] for s in samples]
        return outputs(self.predictor, logits, ids)

    async def predict(self, prepared: Prepared) -> dict[str, Any]:
        return await self.batcher.submit(prepared.sample)


def _session(predictor: Predictor, path: Path) -> Any:
    """The ONNX Runtime session of ``path``: a deep model's graph, or a classical learner's
    (ensembles and learners without a converter are refused first, with what exports)."""
    from medmodal.export.onnx import onnx_session

    model = None
    if is_composite(predictor.config.model):
        from medmodal.classical.onnx import check_classical_export

        model = check_classical_export(predictor)
    if not path.is_file():
        raise ConfigError(f"{path}: no ONNX file; write it with `medmodal export CHECKPOINT`")
    session = onnx_session(path)
    if model is not None:
        from medmodal.classical.onnx import check_classical_session

        check_classical_session(model, session, path)
    elif session.get_modelmeta().custom_metadata_map.get("medmodal.kind") == "classical":
        raise ConfigError(f"{path}: a classical learner's graph, not this deep checkpoint's")
    return session


def _read(proc: Any, row: dict[str, Any], part: str) -> Any:
    """``proc.read`` with every failure turned into a BadRequest naming the part."""
    try:
        return proc.read(row, None)
    except DecodeLimitError as exc:
        raise BadRequest(f"part {part!r}: {clean(exc.reason)}", part=part, status=413) from None
    except DataError as exc:
        raise BadRequest(f"part {part!r}: {clean(exc.reason)}", part=part) from None
    except MemoryError:
        raise Busy(f"part {part!r}: out of memory while decoding; retry later") from None
    except Exception as exc:  # a library's own error on a malformed file: still the part's fault
        raise BadRequest(f"part {part!r} cannot be read: {describe(exc)}", part=part) from None


def _transform(proc: Any, raw: Any, part: str) -> Any:
    try:
        return proc.transform(raw)
    except DataError as exc:
        raise BadRequest(f"part {part!r}: {clean(exc.reason)}", part=part) from None
    except Exception as exc:
        raise BadRequest(f"part {part!r} cannot be used: {describe(exc)}", part=part) from None


def clean(text: str) -> str:
    """A message without memory addresses (``<_io.BytesIO object at 0x...>``), one line."""
    line = (text.strip().splitlines() or [""])[0]
    line = _ADDRESS.sub("the upload", line)
    return line if len(line) <= 300 else line[:297] + "..."


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {clean(str(exc))}" if str(exc) else type(exc).__name__


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
