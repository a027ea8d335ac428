"""The one path from a manifest to model inputs, shared by training, evaluation and prediction."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medmodal.checkpoint import read_checkpoint
from medmodal.data.dataset import MultimodalDataset
from medmodal.data.manifest import LabelMap, check_columns, encode_labels, patient_ids, sample_ids
from medmodal.data.preprocess import ModalityProcessor, create_processor
from medmodal.data.schema import Schema
from medmodal.errors import BadSampleLog, CheckpointError
from medmodal.models import MultimodalModel, build_model
from medmodal.models.heads import n_outputs_for
from medmodal.train.losses import to_probs
from medmodal.train.trainer import predict_logits


def make_processors(schema: Schema) -> dict[str, ModalityProcessor]:
    return {m: create_processor(m, spec) for m, spec in schema.modalities.items()}


def model_from_config(
    schema: Schema,
    label_map: LabelMap,
    processors: dict[str, ModalityProcessor],
    model_cfg: dict[str, Any],
    load_init: bool = True,
) -> MultimodalModel:
    return build_model(
        modality_types={m: spec.type for m, spec in schema.modalities.items()},
        infos={m: p.info() for m, p in processors.items()},
        encoders=model_cfg.get("encoders", {}),
        fusion=_with_task(model_cfg.get("fusion", {"name": "concat"}), label_map.task),
        head=model_cfg.get("head", {"name": "linear"}),
        n_outputs=n_outputs_for(label_map.task, len(label_map.classes)),
        modality_dropout=model_cfg.get("modality_dropout", 0.0),
        load_init=load_init,
    )


def _with_task(fusion: dict[str, Any], task: str) -> dict[str, Any]:
    """Late fusion needs the task to average probabilities correctly."""
    f = dict(fusion)
    if f.get("name") == "late":
        f.setdefault("task", task)
    return f


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
    """Rows -> loaded dataset (labels encoded when ``label_map`` is given)."""
    ids = sample_ids(frame, schema, source)
    pats = patient_ids(frame, schema, ids, source)
    labels = None
    keep = np.ones(len(frame), dtype=bool)
    if label_map is not None:
        labels, keep = encode_labels(frame, schema, label_map, ids, bad)
    rows = frame.to_dict("records")
    idx = np.flatnonzero(keep)
    ds = MultimodalDataset(
        [rows[i] for i in idx],
        [ids[i] for i in idx],
        [pats[i] for i in idx],
        None if labels is None else labels[idx],
        processors,
        root,
    )
    return ds.load(bad, progress=progress, label=f"reading {source}")


@dataclass
class Predictor:
    """A trained model with everything needed to predict from raw inputs."""

    schema: Schema
    label_map: LabelMap
    processors: dict[str, ModalityProcessor]
    model: MultimodalModel
    config: dict[str, Any]
    body: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> Predictor:
        body = read_checkpoint(path)
        try:
            schema = Schema.load(body["schema"])
            label_map = LabelMap.from_dict(body["label_map"])
            processors = make_processors(schema)
            for m, state in body["processors"].items():
                processors[m].load_state_dict(state)
            model = model_from_config(
                schema, label_map, processors, body["config"]["model"], load_init=False
            )
            model.load_state_dict(body["model_state"])
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(
                f"checkpoint {path} does not fit this medmodal version: {exc}"
            ) from None
        model.to(device).eval()
        return cls(schema, label_map, processors, model, body["config"], body)

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
        ds = build_dataset(
            frame,
            self.schema,
            self.processors,
            root,
            self.label_map if with_labels else None,
            bad,
            source,
        )
        return ds.finalize()

    def predict_proba(self, ds: MultimodalDataset, batch_size: int = 256) -> np.ndarray:
        logits = predict_logits(self.model, ds, batch_size, self.device)
        return to_probs(logits, self.label_map.task).numpy()

    def probability_frame(self, ds: MultimodalDataset, probs: np.ndarray) -> pd.DataFrame:
        return probability_frame(ds, probs, self.label_map)


def probability_frame(
    ds: MultimodalDataset, probs: np.ndarray, label_map: LabelMap
) -> pd.DataFrame:
    """One row per sample: ids, presence flags, a probability per class and the prediction."""
    classes = label_map.classes
    out = pd.DataFrame({"sample_id": ds.ids, "patient_id": ds.patients})
    pres = ds.present_matrix()
    for j, m in enumerate(ds.processors):
        out[f"present_{m}"] = pres[:, j]
    if label_map.task == "binary":
        out[f"prob_{classes[0]}"] = 1 - probs
        out[f"prob_{classes[1]}"] = probs
        out["predicted"] = [classes[int(p >= 0.5)] for p in probs]
    elif label_map.task == "multiclass":
        for k, c in enumerate(classes):
            out[f"prob_{c}"] = probs[:, k]
        out["predicted"] = [classes[k] for k in probs.argmax(1)]
    else:
        for k, c in enumerate(classes):
            out[f"prob_{c}"] = probs[:, k]
        out["predicted"] = [
            ";".join(c for k, c in enumerate(classes) if row[k] >= 0.5) for row in probs
        ]
    if ds.labels is not None:
        if label_map.task == "multilabel":
            out["label"] = [
                ";".join(c for k, c in enumerate(classes) if row[k]) for row in ds.labels
            ]
        else:
            out["label"] = [classes[int(v)] for v in ds.labels]
    return out
