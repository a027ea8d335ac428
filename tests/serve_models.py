"""A four-modality model (image, note, record, ECG beat) with random weights over processors
fitted on a few real inputs, for the service tests (no training needed)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medmodal.config import ExperimentConfig
from medmodal.data.manifest import LabelMap
from medmodal.data.readers import Blob
from medmodal.data.schema import Schema
from medmodal.predictor import Predictor, make_processors, model_for


def png(arr: np.ndarray) -> bytes:
    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(arr).save(b, "PNG")
    return b.getvalue()


def four_modality_inputs(data_dir: Path) -> dict[str, Any]:
    imgs = np.load(data_dir / "medmnist" / "breastmnist.npz")["test_images"][:10]
    meta = pd.read_csv(data_dir / "covid_cxr" / "metadata.csv")
    notes = meta["clinical_notes"].dropna().drop_duplicates().head(20).tolist()
    records = meta[["age", "temperature", "sex"]].head(20).to_dict("records")
    rec = data_dir / "mitdb" / "100"
    beats = [f"{rec}#{s}:{s + 252}" for s in range(2000, 2000 + 10 * 400, 400)]
    return {"images": imgs, "notes": notes, "records": records, "beats": beats, "mitdb": rec}


def four_modality_checkpoint(inputs: dict[str, Any], out: Path) -> Path:
    """image + note (word BiGRU) + record + ECG beat (MLII, else V5), random weights."""
    signal = {"leads": ["MLII", "V5"], "lead_fallback": True, "input_fs": 360, "length": 252}
    schema = Schema.load(
        {
            "target": {"task": "binary", "column": "y", "classes": ["no", "yes"]},
            "modalities": {
                "image": {"type": "image", "column": "image", "preprocess": {"size": [28, 28]}},
                "note": {"type": "text", "column": "note",
                         "preprocess": {"tokenizer": "word", "source": "inline", "max_len": 64}},
                "record": {"type": "tabular", "columns": ["age", "temperature", "sex"],
                           "categorical": ["sex"]},
                "ecg": {"type": "signal", "column": "ecg", "preprocess": signal},
            },
        }
    )  # fmt: skip
    procs = make_processors(schema)
    fit_rows = {
        "image": [{"image": Blob(png(a), "image")} for a in inputs["images"]],
        "note": [{"note": n} for n in inputs["notes"]],
        "record": inputs["records"],
        "ecg": [{"ecg": b} for b in inputs["beats"]],
    }
    for m, rows in fit_rows.items():
        procs[m].fit([procs[m].read(r, None) for r in rows])
    cfg = ExperimentConfig.model_validate(
        {
            "model": {
                "encoders": {
                    "image": {"name": "baseline_cnn", "filters": 4, "hidden": 8},
                    "note": {"name": "bigru", "hidden": 8, "embed_dim": 8},
                    "record": {"name": "mlp", "hidden": [8]},
                    "ecg": {"name": "cnn1d", "channels": [4, 8]},
                },
                "fusion": {"name": "attention"},
            }
        }
    )
    labels = LabelMap(task="binary", classes=["no", "yes"])
    pred = Predictor(schema, labels, procs, model_for(schema, labels, procs, cfg), cfg)
    return pred.save(out / "m.pt")
