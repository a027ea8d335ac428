"""Samples, collation, caching and honest handling of absent / unreadable modalities."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medmodal import api
from medmodal.data.dataset import MultimodalDataset, collate
from medmodal.data.preprocess import create_processor
from medmodal.data.preprocess.image import ImageProcessor
from medmodal.data.schema import ModalitySpec
from medmodal.errors import BadSampleLog, DataError


def _rows(tmp_path: Path, pngs: Callable, n: int = 12) -> list[dict]:
    """Real PneumoniaMNIST images as PNG (``medmnist_pngs``) beside a made-up age and sex."""
    return [
        {"img": name, "age": float(40 + i), "sex": "MF"[i % 2]}
        for i, (name, _) in enumerate(pngs(tmp_path, "pneumoniamnist", n))
    ]


def _procs() -> dict:
    return {
        "xray": create_processor(
            "xray", ModalitySpec(type="image", column="img", preprocess={"size": [28, 28]})
        ),
        "labs": create_processor(
            "labs", ModalitySpec(type="tabular", columns=["age", "sex"], categorical=["sex"])
        ),
    }


def test_sample_and_batch_structure(tmp_path: Path, medmnist_pngs: Callable) -> None:
    rows = _rows(tmp_path, medmnist_pngs)
    rows[2]["img"] = np.nan  # absent image: the row stays, the mask says so
    ds = MultimodalDataset(
        rows,
        [f"s{i}" for i in range(12)],
        [f"p{i}" for i in range(12)],
        np.arange(12) % 2,
        _procs(),
        tmp_path,
    ).load()
    for m, p in ds.processors.items():
        p.fit(ds.raws_of(m))
    ds.finalize()
    s = ds[2]
    assert set(s) == {"id", "patient_id", "present", "label", "xray", "labs"}
    assert s["present"] == {"xray": False, "labs": True}
    assert s["xray"].shape == (1, 28, 28) and torch.all(s["xray"] == 0)
    batch = collate([ds[i] for i in range(4)])
    assert batch["inputs"]["xray"].shape == (4, 1, 28, 28)
    assert batch["present"]["xray"].tolist() == [True, True, False, True]
    assert set(batch["inputs"]["labs"]) == {"numeric", "categorical"}
    assert batch["label"].tolist() == [0, 1, 0, 1]
    assert ds.missing_counts == {"xray": {"absent": 1, "bad": 0}, "labs": {"absent": 0, "bad": 0}}


def test_second_epoch_does_not_decode_again(
    tmp_path: Path, medmnist_pngs: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = _rows(tmp_path, medmnist_pngs)
    frame = pd.DataFrame(
        [{**r, "sid": f"s{i}", "pid": f"p{i}", "y": "ab"[i % 2]} for i, r in enumerate(rows)]
    )
    frame.to_csv(tmp_path / "m.csv", index=False)
    calls = {"n": 0}
    original = ImageProcessor.read

    def counting(self, row, root):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return original(self, row, root)

    monkeypatch.setattr(ImageProcessor, "read", counting)
    cfg = {
        "name": "c",
        "output_dir": str(tmp_path / "run"),
        "data": {
            "manifest": str(tmp_path / "m.csv"),
            "val_fraction": 0.25,
            "test_fraction": 0.25,
            "schema": {
                "id_column": "sid",
                "patient_column": "pid",
                "target": {"task": "binary", "column": "y"},
                "modalities": {
                    "xray": {"type": "image", "column": "img", "preprocess": {"size": [28, 28]}}
                },
            },
        },
        "model": {"encoders": {"xray": {"name": "baseline_cnn"}}},
        "train": {"epochs": 3, "batch_size": 4},
        "evaluate": {"bootstrap": 0, "report": False},
    }
    api.fit(cfg, progress=False)
    assert calls["n"] == 12  # once per sample, not once per epoch


def test_on_bad_missing_counts_instead_of_failing(tmp_path: Path, medmnist_pngs: Callable) -> None:
    rows = _rows(tmp_path, medmnist_pngs)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rows[4]["img"] = "bad.png"
    procs = _procs()
    ids = [f"s{i}" for i in range(12)]
    with pytest.raises(DataError, match=r"sample 's4', modality 'xray', file .*bad.png"):
        MultimodalDataset(rows, ids, ids, None, procs, tmp_path).load()
    bad = BadSampleLog()
    ds = MultimodalDataset(rows, ids, ids, None, procs, tmp_path).load(bad)
    assert len(ds) == 11 and bad.ids() == {"s4"}
    procs["xray"].spec = procs["xray"].spec.model_copy(update={"on_bad": "missing"})
    ds = MultimodalDataset(rows, ids, ids, None, procs, tmp_path).load()
    assert len(ds) == 12 and ds.missing_counts["xray"] == {"absent": 0, "bad": 1}
    assert "bad.png" in ds.bad_inputs[4]["xray"]
