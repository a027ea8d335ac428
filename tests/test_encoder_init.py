"""Encoders can start from saved weights (the hook SimMIM pretraining plugs into)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from medmodal import api
from medmodal.errors import ConfigError
from medmodal.models import build_model


def _build(encoder: dict) -> torch.nn.Module:
    info = {"in_channels": 1, "spatial_dims": 2, "size": [28, 28]}
    return build_model({"image": "image"}, {"image": info}, {"image": encoder},
                       {"name": "concat"}, {"name": "linear"}, 1)


def test_init_from_state_dict_and_freeze(tmp_path: Path) -> None:
    torch.manual_seed(0)
    donor = _build({"name": "baseline_cnn"})
    path = tmp_path / "enc.pt"
    torch.save(donor.encoders["image"].state_dict(), path)
    torch.manual_seed(1)
    fresh = _build({"name": "baseline_cnn"})
    first = next(iter(donor.encoders["image"].state_dict()))
    assert not torch.equal(fresh.encoders["image"].state_dict()[first], donor.encoders["image"].state_dict()[first])
    model = _build({"name": "baseline_cnn", "init": str(path), "freeze_init": True})
    for k, v in donor.encoders["image"].state_dict().items():
        assert torch.equal(model.encoders["image"].state_dict()[k], v), k
    assert not any(p.requires_grad for p in model.encoders["image"].parameters())
    assert all(p.requires_grad for p in model.head.parameters())


def test_init_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        _build({"name": "baseline_cnn", "init": str(tmp_path / "missing.pt")})
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="cannot read"):
        _build({"name": "baseline_cnn", "init": str(bad)})
    other = tmp_path / "other.pt"
    torch.save(_build({"name": "resnet18"}).encoders["image"].state_dict(), other)
    with pytest.raises(ConfigError, match="do not fit"):
        _build({"name": "baseline_cnn", "init": str(other)})


def test_init_from_a_checkpoint_and_predict_without_the_init_file(tmp_path: Path) -> None:
    base = {
        "seed": 0,
        "data": {"dataset": "wdbc"},
        "train": {"epochs": 3, "batch_size": 64},
        "evaluate": {"bootstrap": 0, "report": False},
    }
    first = api.fit({**base, "name": "a", "output_dir": str(tmp_path / "a"),
                     "model": {"encoders": {"record": {"name": "mlp", "hidden": [16]}}}},
                    progress=False)
    init = tmp_path / "pretrained.pt"
    init.write_bytes(Path(first.checkpoint).read_bytes())
    second = api.fit({**base, "name": "b", "output_dir": str(tmp_path / "b"), "train": {**base["train"], "epochs": 1},
                      "model": {"encoders": {"record": {"name": "mlp", "hidden": [16], "init": str(init)}}}},
                     progress=False)
    init.unlink()  # a trained checkpoint must not need its init file any more
    manifest = Path(second.run_dir) / "data" / "manifest.csv"
    if not manifest.is_file():
        manifest = next(Path(second.run_dir).rglob("manifest.csv"))
    probs = api.predict(second.checkpoint, manifest)
    assert isinstance(probs, pd.DataFrame) and len(probs) > 0
    # Starting from trained weights, one more epoch is at least as good as chance by far.
    assert second.metrics["test"]["auroc"] > 0.9
