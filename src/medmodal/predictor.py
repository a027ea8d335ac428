"""The one path from raw inputs to probabilities and predicted classes.

Validation during training, the test split after training, ``evaluate`` and ``predict`` all go
through :func:`predict_logits` and a :class:`Predictor`: the same processors, the same model
call, the same decision rule (:func:`medmodal.evaluate.decide`). A Predictor is also what a
checkpoint holds: :meth:`Predictor.save` writes it, :meth:`Predictor.load` reads it back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from medmodal.checkpoint import read_checkpoint, save_checkpoint
from medmodal.config import ExperimentConfig
from medmodal.data.dataset import MultimodalDataset, collate
from medmodal.data.manifest import LabelMap, check_columns, encode_labels, patient_ids, sample_ids
from medmodal.data.preprocess import ModalityProcessor, create_processor
from medmodal.data.schema import Schema
from medmodal.ensemble.build import BuildContext, composite_model, is_composite
from medmodal.errors import BadSampleLog, CheckpointError, DataError, MedmodalError
from medmodal.evaluate.conformal import ConformalFit, fit_conformal
from medmodal.evaluate.decision import decide
from medmodal.evaluate.spec import EvalSpec, with_evaluate_options
from medmodal.evaluate.temperature import apply_temperature, fit_temperature, nll
from medmodal.models import MultimodalModel, build_model
from medmodal.models.heads import n_outputs_for
from medmodal.options import parse_options
from medmodal.survival import SurvivalModel
from medmodal.utils.runtime import autocast, to_channels_last


def make_processors(schema: Schema) -> dict[str, ModalityProcessor]:
    return {m: create_processor(m, spec) for m, spec in schema.modalities.items()}


def model_for(
    schema: Schema,
    label_map: LabelMap,
    processors: dict[str, ModalityProcessor],
    cfg: ExperimentConfig,
    load_init: bool = True,
) -> MultimodalModel:
    """The configured model for fitted ``processors`` (their ``info`` sizes the encoders)."""
    bins = survival_for(label_map, cfg)
    types = {m: spec.type for m, spec in schema.modalities.items()}
    infos = {m: p.info() for m, p in processors.items()}
    n_outputs = n_outputs_for(
        label_map.task, len(label_map.classes), bins.n_outputs if bins else None
    )
    if is_composite(cfg.model):  # a classical learner or an ensemble (medmodal.ensemble)
        ctx = BuildContext(types, infos, processors, label_map.task, n_outputs)
        return composite_model(cfg.model, ctx, cfg.seed, load_init)  # type: ignore[return-value]
    return build_model(
        types, infos, cfg.model, task=label_map.task, n_outputs=n_outputs, load_init=load_init
    )


def survival_for(label_map: LabelMap, cfg: ExperimentConfig) -> SurvivalModel | None:
    """An unfitted survival model of the configured method for a survival target, else None."""
    return SurvivalModel(cfg.model.survival) if label_map.task == "survival" else None


def build_dataset(
    frame: pd.DataFrame,
    schema: Schema,
    processors: dict[str, ModalityProcessor],
    root: Path | None,
    label_map: LabelMap | None,
    bad: BadSampleLog | None,
    source: str,
    progress: bool = False,
) -> MultimodalDataset:
    """Rows -> loaded dataset (labels encoded when ``label_map`` is given); see
    :func:`dataset_rows` to load with other options (a spill folder)."""
    ds = dataset_rows(frame, schema, processors, root, label_map, bad, source)
    return ds.load(bad, progress=progress, label=f"reading {source}")


def dataset_rows(
    frame: pd.DataFrame,
    schema: Schema,
    processors: dict[str, ModalityProcessor],
    root: Path | None,
    label_map: LabelMap | None,
    bad: BadSampleLog | None,
    source: str,
) -> MultimodalDataset:
    """Rows -> dataset not read yet (its ``load`` decodes the samples): ids, patients and, when
    ``label_map`` is given, encoded labels (rows with a bad label logged in ``bad`` and left
    out, or a DataError without it)."""
    ids = sample_ids(frame, schema, source)
    pats = patient_ids(frame, schema, ids, source)
    labels = None
    keep = np.ones(len(frame), dtype=bool)
    if label_map is not None:
        labels, keep = encode_labels(frame, schema, label_map, ids, bad)
    rows = frame.to_dict("records")
    idx = np.flatnonzero(keep)
    return MultimodalDataset(
        [rows[i] for i in idx],
        [ids[i] for i in idx],
        [pats[i] for i in idx],
        None if labels is None else labels[idx],
        processors,
        root,
    )


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    dataset: MultimodalDataset,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    absent: tuple[str, ...] | list[str] = (),
    indices: Sequence[int] | None = None,
    amp: bool = False,
) -> torch.Tensor:
    """Logits for every sample (or the rows ``indices``), in that order (eval mode, no
    augmentation).

    ``absent``: modalities to treat as missing for every sample (test-time removal);
    ``amp``: the forward pass under bf16 (CPU) / fp16 (CUDA) autocast.
    """
    device = torch.device(device)
    was_train, dataset.train = dataset.train, False
    model.eval()
    out = []
    rows = None if indices is None else list(indices)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=rows, collate_fn=collate)
    for batch in loader:
        out.append(batch_logits(model, batch, device, absent, amp))
    dataset.train = was_train
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def batch_logits(
    model: torch.nn.Module,
    batch: Mapping[str, Any],
    device: torch.device,
    absent: tuple[str, ...] | list[str] = (),
    amp: bool = False,
) -> torch.Tensor:
    """Logits (float32, on the CPU) of one collated batch; ``absent`` modalities are hidden."""
    present = {m: v.to(device) for m, v in batch["present"].items()}
    for m in absent:
        present[m] = torch.zeros_like(present[m])
    with autocast(device, amp):
        logits = model(to_device(batch["inputs"], device), present)
    return logits.float().cpu()


def to_probs(logits: torch.Tensor, task: str) -> torch.Tensor:
    """binary: (B,) P(positive); multiclass: (B, K) softmax; multilabel: (B, K) sigmoid."""
    if task == "binary":
        return torch.sigmoid(logits.reshape(-1))
    if task == "multiclass":
        return torch.softmax(logits, dim=1)
    return torch.sigmoid(logits)


def to_device(x: Any, device: torch.device) -> Any:
    """Tensors (also inside nested dicts, e.g. a text batch) moved to ``device``."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    return x


Step = Callable[[ModalityProcessor, Any, str], Any]


@dataclass
class ReadSample:
    """:meth:`Predictor.read_sample`'s result: the Sample, the full row of raw inputs and each
    modality's ``read`` output (None: absent)."""

    sample: dict[str, Any]
    row: dict[str, Any]
    raws: dict[str, Any]


@dataclass
class Predictor:
    """A trained model with everything needed to predict from raw inputs.

    ``eval_spec``: how its predictions are decided and scored, derived from ``config`` and
    ``label_map`` when the Predictor is made (so also for any checkpoint, old ones included);
    :meth:`with_evaluation` gives a copy with other ``evaluate`` options. ``temperature``
    (fitted on validation; one value, or one per label) divides the logits before the
    probabilities; ``conformal`` turns probabilities into prediction sets. Both are None until
    :meth:`fit_trust` fits them and in older checkpoints; nothing else sets them.
    """

    schema: Schema
    label_map: LabelMap
    processors: dict[str, ModalityProcessor]
    model: MultimodalModel
    config: ExperimentConfig
    temperature: np.ndarray | None = None
    conformal: ConformalFit | None = None
    survival: SurvivalModel | None = None  # survival targets: cuts / Breslow baseline
    amp: bool = False  # forward passes under autocast (see :meth:`load`); not saved
    eval_spec: EvalSpec = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.eval_spec = EvalSpec.from_config(self.config, self.label_map)

    def with_evaluation(self, **options: Any) -> Predictor:
        """A copy that evaluates with these ``evaluate`` options changed (e.g. ``bootstrap=0``;
        a bad one is a ConfigError naming it); model, processors and fitted state are shared,
        this Predictor is unchanged."""
        return replace(self, config=with_evaluate_options(self.config, options))

    def fit_trust(self, val: MultimodalDataset) -> dict[str, Any]:
        """Fit the spec's calibration (temperature), then its conformal predictor (of the
        calibrated probabilities), on the validation split ``val`` into this Predictor (saved
        with it, applied by every prediction). Returns what was fitted: temperature with the
        validation NLL before / after, and the conformal fit (``{}`` when none is configured)."""
        spec, out = self.eval_spec, {}
        if spec.calibrate == "none" and spec.conformal == "none":
            return out
        logits, y = self.logits(val), np.asarray(val.labels)
        if spec.calibrate == "temperature":
            z = logits.numpy().astype(np.float64)
            self.temperature = t = fit_temperature(z, y, spec.task)
            out["calibration"] = {
                "method": "temperature",
                "temperature": t.tolist(),
                "val_nll_before": nll(z, y, spec.task),
                "val_nll_after": nll(apply_temperature(z, t), y, spec.task),
            }
        if spec.conformal != "none":
            probs = self.probs_from_logits(logits)
            fit = fit_conformal(probs, y, spec.task, spec.conformal, spec.coverage, val.ids)
            self.conformal = fit
            out["conformal"] = fit.to_dict()
        return out

    # -- checkpoint ----------------------------------------------------------------------
    def payload(self) -> dict[str, Any]:
        """What a checkpoint holds for prediction (plain values and tensors only)."""
        t = self.temperature
        return {
            "config": self.config.to_dict(),
            "schema": self.schema.model_dump(mode="json"),
            "label_map": self.label_map.to_dict(),
            "processors": {m: p.state_dict() for m, p in self.processors.items()},
            "model_state": self.model.state_dict(),
            "calibration": None
            if t is None
            else {"method": "temperature", "temperature": [float(v) for v in t]},
            "conformal": None if self.conformal is None else self.conformal.to_dict(),
            "survival": None if self.survival is None else self.survival.state_dict(),
        }

    def save(self, path: str | Path, **extra: Any) -> Path:
        """Write the checkpoint; ``extra`` adds e.g. metrics, history, data hash."""
        return save_checkpoint(path, {**self.payload(), **extra})

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", amp: bool = False) -> Predictor:
        """The Predictor a checkpoint holds, on ``device``. ``amp``: predict in bf16 (CPU) /
        fp16 (CUDA) autocast with channels-last encoders: faster where the hardware has bf16
        instructions, probabilities within about 1e-2 of fp32 (off by default)."""
        body = read_checkpoint(path)
        try:
            schema = Schema.load(body["schema"])
            label_map = LabelMap.from_dict(body["label_map"])
            cfg = parse_options(ExperimentConfig, body["config"], f"checkpoint {path} config")
            processors = make_processors(schema)
            for m, state in body["processors"].items():
                processors[m].load_state_dict(state)
            model = model_for(schema, label_map, processors, cfg, load_init=False)
            model.load_state_dict(body["model_state"])
            temperature, conformal = _trust_from(body)
            survival = survival_for(label_map, cfg)
            if survival is not None:
                survival.load_state_dict(body["survival"])
        except (KeyError, RuntimeError, TypeError, ValueError, MedmodalError) as exc:
            raise CheckpointError(
                f"checkpoint {path} does not fit this medmodal version: {exc}"
            ) from None
        model.to(device).eval()
        if amp:
            for encoder in getattr(model, "encoders", {}).values():  # none: classical / ensemble
                to_channels_last(encoder)
        return cls(schema, label_map, processors, model, cfg, temperature, conformal, survival, amp)

    # -- inputs ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def align(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Add absent modality columns as empty, so any subset of modalities can be given;
        id / patient / split columns are optional at prediction time."""
        frame = frame.copy()
        s = self.schema
        if s.id_column and s.id_column not in frame.columns:
            frame[s.id_column] = [str(i) for i in range(len(frame))]
        if s.patient_column and s.patient_column not in frame.columns:
            frame[s.patient_column] = (
                frame[s.id_column] if s.id_column else [str(i) for i in range(len(frame))]
            )
        if s.split_column and s.split_column not in frame.columns:
            frame[s.split_column] = "test"
        for spec in self.schema.modalities.values():
            for col in spec.input_columns():
                if col not in frame.columns:
                    frame[col] = np.nan
        return frame

    def dataset(
        self,
        frame: pd.DataFrame,
        root: Path | None,
        bad: BadSampleLog | None,
        with_labels: bool = False,
        source: str = "input",
    ) -> MultimodalDataset:
        frame = self.align(frame)
        check_columns(frame, self.schema, source, need_labels=with_labels)
        labels = self.label_map if with_labels else None
        ds = build_dataset(frame, self.schema, self.processors, root, labels, bad, source)
        return ds.finalize()

    def sample(self, row: Mapping[str, Any], sample_id: str = "input") -> dict[str, Any]:
        """One Sample (transformed tensors + presence flags) from one row of raw inputs:
        file references, in-memory uploads (:class:`~medmodal.data.readers.Blob`) or cells.
        A modality whose columns the row lacks is absent (whatever ``allow_missing`` says:
        the model predicts from any subset); a bad input is a DataError naming its modality."""
        return self.read_sample(row, sample_id).sample

    def read_sample(self, row: Mapping[str, Any], sample_id: str = "input", *,
                    read: Step | None = None, transform: Step | None = None) -> ReadSample:  # fmt: skip
        """:meth:`sample` with what it read: the full row (every input column, None where not
        sent) and each modality's ``read`` output (None: absent). ``read(proc, full_row, m)``
        and ``transform(proc, raw, m)`` replace the processors' own calls (the service turns
        their errors into its responses); by default a DataError gets the sample's context."""
        full: dict[str, Any] = {
            c: None for spec in self.schema.modalities.values() for c in spec.input_columns()
        }
        full.update(row)

        def own_read(proc: ModalityProcessor, values: dict[str, Any], m: str) -> Any:
            try:
                return proc.read(values, None)
            except DataError as err:
                raise err.with_context(sample_id=sample_id, modality=m) from None

        read = read or own_read
        transform = transform or (lambda proc, raw, m: proc.transform(raw))
        out: dict[str, Any] = {"id": sample_id, "patient_id": sample_id, "present": {}}
        raws: dict[str, Any] = {}
        for m, proc in self.processors.items():
            sent = any(c in row for c in proc.spec.input_columns())
            raws[m] = read(proc, full, m) if sent else None
            out["present"][m] = raws[m] is not None
            out[m] = proc.missing() if raws[m] is None else transform(proc, raws[m], m)
        return ReadSample(out, full, raws)

    def sample_logits(self, samples: list[dict[str, Any]]) -> torch.Tensor:
        """Logits of Samples from :meth:`sample`, as one batch (the server's micro-batches)."""
        self.model.eval()
        return batch_logits(self.model, collate(samples), self.device, amp=self.amp)

    # -- outputs --------------------------------------------------------------------------
    def logits(self, ds: MultimodalDataset, absent: tuple[str, ...] = ()) -> torch.Tensor:
        """Raw model logits in dataset order; ``absent`` modalities are treated as missing."""
        bs = self.config.train.eval_batch_size
        return predict_logits(self.model, ds, bs, self.device, absent=absent, amp=self.amp)

    def probs_from_logits(self, logits: torch.Tensor, calibrated: bool = True) -> np.ndarray:
        """The probability step: logits / T (when fitted and ``calibrated``), then sigmoid or
        softmax (binary: P(positive class), (N,); else (N, K)). Survival is its own branch (no
        temperature): (N, 1 + T), the risk score (higher = earlier event) then the survival
        probability at each time of ``label_map.times``."""
        if self.survival is not None:
            times = np.asarray(self.label_map.times, dtype=float)
            risk = self.survival.risk(logits)
            return np.column_stack([risk, self.survival.curves(logits, times)])
        if calibrated and self.temperature is not None:
            logits = torch.from_numpy(apply_temperature(logits.numpy(), self.temperature))
        return to_probs(logits, self.label_map.task).numpy()

    def predict_proba(self, ds: MultimodalDataset, absent: tuple[str, ...] = ()) -> np.ndarray:
        """Calibrated probabilities (see :meth:`probs_from_logits`); ``absent`` modalities
        are treated as missing for every sample."""
        return self.probs_from_logits(self.logits(ds, absent))

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Predicted classes by the spec's threshold (``evaluate.threshold``)."""
        return decide(probs, self.eval_spec.task, self.eval_spec.threshold)

    def prediction_sets(self, ids: list[str], probs: np.ndarray) -> np.ndarray | None:
        """Conformal prediction sets for these samples (None when none was fitted)."""
        if self.conformal is None:
            return None
        return self.conformal.sets(probs, self.label_map.task, ids)

    def prediction_frame(self, ds: MultimodalDataset, probs: np.ndarray) -> pd.DataFrame:
        """One row per sample: ids, presence flags, a probability per class, the prediction
        and, with a fitted conformal predictor, the prediction set."""
        sets = self.prediction_sets(ds.ids, probs)
        return prediction_frame(ds, probs, self.eval_spec, sets)


def _trust_from(body: dict[str, Any]) -> tuple[np.ndarray | None, ConformalFit | None]:
    """Temperature and conformal fit stored in a checkpoint (absent in older ones)."""
    cal, conf = body.get("calibration"), body.get("conformal")
    temperature = None
    if cal is not None:
        temperature = np.asarray([float(v) for v in cal["temperature"]], dtype=np.float64)
        if not (np.isfinite(temperature).all() and (temperature > 0).all()):
            raise ValueError(f"stored temperature {temperature.tolist()} is not positive")
    return temperature, None if conf is None else ConformalFit.from_dict(conf)


def prediction_frame(
    ds: MultimodalDataset, probs: np.ndarray, spec: EvalSpec, sets: np.ndarray | None = None
) -> pd.DataFrame:
    """One row per sample: ids, presence flags, a probability per class, the predicted class
    (by :func:`~medmodal.evaluate.decide` at ``spec.threshold``), the label when known and, given
    conformal ``sets``, ``prediction_set`` (class names in class order joined by '|'; empty
    for an empty set) or, multilabel, ``set_<label>`` per label (``absent|present``, ...)."""
    classes, task = list(spec.classes), spec.task
    out = pd.DataFrame({"sample_id": ds.ids, "patient_id": ds.patients})
    pres = ds.present_matrix()
    for j, m in enumerate(ds.processors):
        out[f"present_{m}"] = pres[:, j]
    if task == "survival":
        return survival_frame(out, ds, probs, spec.times)
    if task == "binary":
        out[f"prob_{classes[0]}"] = 1 - probs
        out[f"prob_{classes[1]}"] = probs
    else:
        for k, c in enumerate(classes):
            out[f"prob_{c}"] = probs[:, k]
    out["predicted"] = _names(decide(probs, task, spec.threshold), classes, task)
    if ds.labels is not None:
        out["label"] = _names(np.asarray(ds.labels).astype(int), classes, task)
    if sets is not None and task == "multilabel":
        for k, c in enumerate(classes):
            out[f"set_{c}"] = _joined(sets[:, k], ["absent", "present"])
    elif sets is not None:
        out["prediction_set"] = _joined(sets, classes)
    return out


def _joined(sets: np.ndarray, names: list[str]) -> list[str]:
    """Each boolean set row as the names it holds joined by '|'."""
    return ["|".join(n for n, inside in zip(names, row, strict=True) if inside) for row in sets]


def survival_frame(
    out: pd.DataFrame, ds: MultimodalDataset, probs: np.ndarray, times: Sequence[float] | None
) -> pd.DataFrame:
    """Survival rows: the risk score, S(t) at each grid time (``surv_<t>``), time and event."""
    curves = pd.DataFrame(
        probs[:, 1:], columns=[f"surv_{t:.10g}" for t in times or []], index=out.index
    )
    out = pd.concat([out.assign(risk=probs[:, 0]), curves], axis=1)
    if ds.labels is not None:
        y = np.asarray(ds.labels)
        out["time"], out["event"] = y[:, 0], y[:, 1].astype(int)
    return out


def _names(values: np.ndarray, classes: list[str], task: str) -> list[str]:
    """Class names for indices (multilabel: the positive labels joined by ';')."""
    if task == "multilabel":
        return [";".join(c for c, v in zip(classes, row, strict=True) if v) for row in values]
    return [classes[int(v)] for v in values]
