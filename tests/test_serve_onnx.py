"""ONNX export: exact for every registered encoder on real inputs, refused (with the reason) when a
graph cannot reproduce the model, and served through ONNX Runtime whatever inputs the graph kept.

Models here have random weights (parity does not need training) over processors fitted on a few
real rows: BreastMNIST images, covid_cxr notes and records, MIT-BIH beats, heart-sound recordings.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("onnxruntime")

from medmodal.config import ExperimentConfig  # noqa: E402
from medmodal.data.readers import Blob  # noqa: E402
from medmodal.data.schema import Schema  # noqa: E402
from medmodal.errors import ConfigError  # noqa: E402
from medmodal.export.onnx import export_onnx, onnx_session, parity  # noqa: E402
from medmodal.predictor import Predictor, make_processors, model_for  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
TARGET = {"task": "multiclass", "column": "y", "classes": ["a", "b", "c"]}

# A modality per input type: its schema entry, and the small options each encoder is built with.
SMALL = {
    "baseline_cnn": {"filters": 4, "hidden": 8},
    "vit": {"hidden_size": 32, "mlp_dim": 64, "num_layers": 2, "num_heads": 2},
    "swin": {"embed_dim": 12, "num_heads": [3, 3], "window_size": 4},
    "bigru": {"hidden": 16, "embed_dim": 16},
    "bilstm": {"hidden": 16, "embed_dim": 16, "layers": 2},
    "cnn1d": {"channels": [4, 8]},
    "resnet1d": {"widths": [4, 8], "blocks": [1, 1]},
    "audio_cnn": {"channels": [4, 8]},
    "ft_transformer": {"d_token": 16, "n_layers": 1, "n_heads": 2},
    "mlp": {"hidden": [8]},
}
TOKENIZER = {
    "bigru": "word",
    "bilstm": "word",
    "minilm": "wordpiece",
    "embedding_mlp": "minilm_embed",
}


def png(arr: np.ndarray) -> bytes:
    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(arr).save(b, "PNG")
    return b.getvalue()


@pytest.fixture(scope="module")
def real_rows(data_dir: Path) -> dict[str, list[dict[str, Any]]]:
    return real_inputs(data_dir)


def real_inputs(data_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """A few real inputs of every modality type (as row cells / uploads); benchmarks/serve.py
    measures the per-encoder parity on them too."""
    imgs = np.load(data_dir / "medmnist" / "breastmnist.npz")["test_images"][:12]
    meta = pd.read_csv(data_dir / "covid_cxr" / "metadata.csv")
    notes = meta["clinical_notes"].dropna().drop_duplicates().head(60).tolist()
    rec = meta[["age", "temperature", "sex", "view"]].head(40)
    records = [r for r in rec.to_dict("records") if pd.Series(r).notna().any()]
    mitdb = data_dir / "mitdb" / "100"
    beats = [f"{mitdb}#{s}:{s + 252}" for s in range(1000, 1000 + 12 * 500, 500)]
    wavs = sorted((data_dir / "heart_sounds" / "N").glob("*.wav"))[:6]
    return {
        "image": [{"x": Blob(png(a), "image")} for a in imgs],
        "text": [{"x": n} for n in notes],
        "tabular": records,
        "signal": [{"x": b} for b in beats],
        "audio": [{"x": str(w)} for w in wavs],
    }


def modality(kind: str, encoder: str) -> dict[str, Any]:
    if kind == "image":
        return {"type": "image", "column": "x", "preprocess": {"size": [28, 28]}}
    if kind == "text":
        pre = {"tokenizer": TOKENIZER[encoder], "source": "inline", "max_len": 96}
        return {"type": "text", "column": "x", "preprocess": pre}
    if kind == "tabular":
        return {"type": "tabular", "columns": ["age", "temperature", "sex", "view"],
                "categorical": ["sex", "view"]}  # fmt: skip
    if kind == "signal":
        return {"type": "signal", "column": "x", "preprocess": {"leads": ["MLII"], "length": 252}}
    return {"type": "audio", "column": "x", "preprocess": {"sample_rate": 2000, "duration": 2.0}}


def random_predictor(kind: str, encoder: str, rows: list[dict[str, Any]]) -> Predictor:
    """A Predictor of one modality through ``encoder`` (random weights), processors fitted on rows."""
    schema = Schema.load({"target": TARGET, "modalities": {"x": modality(kind, encoder)}})
    procs = make_processors(schema)
    procs["x"].fit([procs["x"].read(r, None) for r in rows])
    cfg = ExperimentConfig.model_validate(
        {"model": {"encoders": {"x": {"name": encoder, **SMALL.get(encoder, {})}}}}
    )
    from medmodal.data.manifest import LabelMap

    labels = LabelMap(task="multiclass", classes=TARGET["classes"])
    torch.manual_seed(0)
    pred = Predictor(schema, labels, procs, model_for(schema, labels, procs, cfg), cfg)
    pred.model.eval()
    return pred


def export_parity(pred: Predictor, rows: list[dict[str, Any]], out: Path) -> float:
    session = onnx_session(export_onnx(pred, out))
    samples = [pred.sample(r) for r in rows]
    samples[-1]["present"] = {"x": False}  # an absent row: the missing token
    return parity(pred, session, samples)


@pytest.mark.parametrize("encoder", ["bigru", "bilstm"])
def test_rnn_note_encoders_export_exactly_on_real_notes(
    encoder: str, real_rows: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """The padded export path (no pack_padded_sequence) equals the packed PyTorch path."""
    rows = real_rows["text"]
    pred = random_predictor("text", encoder, rows)
    enc = pred.model.encoders["x"]
    batch = torch.utils.data.default_collate([pred.sample(r)["x"] for r in rows])
    emb = enc.embedding(batch["input_ids"])
    mask = batch["attention_mask"]
    keep = mask.bool().unsqueeze(-1)
    packed, padded = enc.packed_states(emb, mask), enc.padded_states(emb, mask)
    assert float(((packed - padded).abs() * keep).max().detach()) < 1e-5
    assert len({int(n) for n in mask.sum(1)}) > 10  # notes of many lengths
    assert export_parity(pred, rows, tmp_path / f"{encoder}.onnx") <= 1e-4


@pytest.mark.slow
def test_every_registered_encoder_exports_exactly(
    real_rows: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """A new encoder is covered once registered: it exports within 1e-4, or is refused with why."""
    from medmodal.models.encoders.base import ENCODERS, encoder_capabilities, encoder_modalities

    diffs = {}
    for name in ENCODERS.names():
        kind = encoder_modalities(name)[0]
        pred = random_predictor(kind, name, real_rows[kind])
        if not encoder_capabilities(name).onnx:
            with pytest.raises(ConfigError, match="has no ONNX export \\("):
                export_onnx(pred, tmp_path / f"{name}.onnx")
            continue
        diffs[name] = export_parity(pred, real_rows[kind], tmp_path / f"{name}.onnx")
    assert max(diffs.values()) <= 1e-4, diffs
    assert {"bigru", "bilstm", "minilm", "vit", "swin", "resnet1d"} <= set(diffs)


def test_export_refuses_an_encoder_that_declares_no_export(
    real_rows: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    from torch import nn

    from medmodal.models.encoders.base import (
        EncoderCapabilities,
        register_encoder,
        unregister_encoder,
    )

    caps = EncoderCapabilities(onnx=False, notes={"onnx": "a custom op with no ONNX symbol"})

    @register_encoder("no_onnx_toy", ("tabular",), capabilities=caps)
    def toy(info: dict[str, Any]) -> nn.Module:
        m = nn.Linear(int(info["n_numeric"]), 4)
        m.out_dim = 4  # type: ignore[assignment]
        return _Numeric(m)

    try:
        pred = random_predictor("tabular", "no_onnx_toy", real_rows["tabular"])
        with pytest.raises(
            ConfigError,
            match=r"modality 'x': the no_onnx_toy encoder has no ONNX export \(a custom op with no "
            r"ONNX symbol\); tabular encoders that export: ft_transformer, mlp",
        ):
            export_onnx(pred, tmp_path / "x.onnx")
    finally:
        unregister_encoder("no_onnx_toy")
    assert not (tmp_path / "x.onnx").exists()


class _Numeric(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, traced_constant: bool = False) -> None:
        super().__init__()
        self.inner, self.out_dim, self.traced_constant = inner, inner.out_dim, traced_constant

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.inner(x["numeric"])
        if self.traced_constant:  # a Python number from the data: the tracer freezes it
            out = out * float(x["numeric"].abs().sum())
        return out


def test_export_refuses_a_graph_that_does_not_reproduce_the_model(
    real_rows: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """An encoder that claims export but traces a data-dependent value as a constant: refused."""
    from torch import nn

    from medmodal.models.encoders.base import register_encoder, unregister_encoder

    @register_encoder("frozen_constant_toy", ("tabular",))
    def toy(info: dict[str, Any]) -> nn.Module:
        m = nn.Linear(int(info["n_numeric"]), 4)
        m.out_dim = 4  # type: ignore[assignment]
        return _Numeric(m, traced_constant=True)

    try:
        pred = random_predictor("tabular", "frozen_constant_toy", real_rows["tabular"])
        with pytest.raises(ConfigError, match="does not reproduce the model.*frozen_constant_toy"):
            export_onnx(pred, tmp_path / "x.onnx")
    finally:
        unregister_encoder("frozen_constant_toy")
    assert not (tmp_path / "x.onnx").exists()


def test_onnx_runtime_serves_a_record_without_categorical_fields(tmp_path: Path) -> None:
    """The exporter drops an empty input (a record with numeric fields only, as MIT-BIH's rr):
    the runtime feeds only the inputs the graph kept (it answered 500 for every request)."""
    from medmodal.serve.inference import ModelEntry
    from medmodal.serve.limits import Part

    schema = Schema.load(
        {"target": TARGET, "modalities": {"rr": {"type": "tabular", "columns": ["a", "b"]}}}
    )
    procs = make_processors(schema)
    rows = [{"a": float(i), "b": float(i % 3)} for i in range(10)]
    procs["rr"].fit([procs["rr"].read(r, None) for r in rows])
    cfg = ExperimentConfig.model_validate({"model": {"encoders": {"rr": {"name": "mlp"}}}})
    from medmodal.data.manifest import LabelMap

    labels = LabelMap(task="multiclass", classes=TARGET["classes"])
    pred = Predictor(schema, labels, procs, model_for(schema, labels, procs, cfg), cfg)
    ckpt = pred.save(tmp_path / "rr.pt")
    onnx = export_onnx(pred, tmp_path / "rr.onnx")
    names = {i.name for i in onnx_session(onnx).get_inputs()}
    assert "rr.categorical" not in names and "rr.numeric" in names
    torch_entry = ModelEntry("rr", ckpt)
    onnx_entry = ModelEntry("rr", ckpt, runtime="onnx", onnx_path=onnx)
    parts = {"rr": Part(b'{"a": 3.5, "b": 1}')}
    a = torch_entry.run_batch([torch_entry.prepare(parts).sample])[0]
    b = onnx_entry.run_batch([onnx_entry.prepare(parts).sample])[0]
    assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)


def test_a_note_model_gives_the_same_answers_through_the_service_on_onnx(
    real_rows: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """Through the service, 12 of 40 note-only predictions flipped class with the old export."""
    from medmodal.serve.inference import ModelEntry
    from medmodal.serve.limits import Part

    rows = real_rows["text"][:40]
    pred = random_predictor("text", "bigru", rows)
    ckpt = pred.save(tmp_path / "note.pt")
    onnx = export_onnx(pred, tmp_path / "note.onnx")
    torch_entry = ModelEntry("n", ckpt)
    onnx_entry = ModelEntry("n", ckpt, runtime="onnx", onnx_path=onnx)
    samples = [torch_entry.prepare({"x": Part(r["x"].encode())}).sample for r in rows]
    a, b = torch_entry.run_batch(samples), onnx_entry.run_batch(samples)
    assert [x["prediction"] for x in a] == [x["prediction"] for x in b]
    diff = max(
        abs(x["probabilities"][k] - y["probabilities"][k])
        for x, y in zip(a, b, strict=True)
        for k in x["probabilities"]
    )
    assert diff < 1e-5
