"""Encoders can start from saved weights (the hook SimMIM pretraining plugs into)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import wdbc_config

from medmodal import api
from medmodal.errors import ConfigError
from medmodal.models import build_model


def _build(encoder: dict) -> torch.nn.Module:
    info = {"in_channels": 1, "spatial_dims": 2, "size": [28, 28]}
    return build_model(
        {"image": "image"},
        {"image": info},
        {"encoders": {"image": encoder}},
        task="binary",
        n_outputs=1,
    )


def test_init_from_state_dict_and_freeze(tmp_path: Path) -> None:
    torch.manual_seed(0)
    donor = _build({"name": "baseline_cnn"})
    path = tmp_path / "enc.pt"
    torch.save(donor.encoders["image"].state_dict(), path)
    torch.manual_seed(1)
    fresh = _build({"name": "baseline_cnn"})
    first = next(iter(donor.encoders["image"].state_dict()))
    assert not torch.equal(
        fresh.encoders["image"].state_dict()[first], donor.encoders["image"].state_dict()[first]
    )
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


def _encoder(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, weights_only=True)["model_state"]
    return {k: v for k, v in state.items() if k.startswith("encoders.record.")}


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return sum(float((a[k] - b[k]).pow(2).sum()) for k in a) ** 0.5


def test_init_from_a_checkpoint_loads_its_weights_and_predicts_without_it(tmp_path: Path) -> None:
    mlp = {"name": "mlp", "hidden": [16]}
    # the donor has its own seed: its weights are not the other runs' random start
    donor_cfg = wdbc_config(tmp_path / "a", seed=1, model={"encoders": {"record": mlp}})
    first = api.fit(donor_cfg, progress=False)
    init = tmp_path / "pretrained.pt"
    init.write_bytes(Path(first.checkpoint).read_bytes())
    donor = _encoder(first.checkpoint)

    def fit(name: str, **spec: object) -> api.RunResult:
        model = {"encoders": {"record": {**mlp, **spec}}}
        return api.fit(
            wdbc_config(tmp_path / name, model=model, train={"epochs": 1}), progress=False
        )

    frozen = fit("frozen", init=str(init), freeze_init=True)
    assert _encoder(frozen.checkpoint).keys() == donor.keys()
    for k, v in _encoder(frozen.checkpoint).items():  # the file's tensors, untouched by training
        assert torch.equal(v, donor[k]), k
    warm, cold = fit("warm", init=str(init)), fit("cold")
    # one epoch moves the weights a little: from the init file, not from a random start
    assert _distance(_encoder(warm.checkpoint), donor) < 0.1 * _distance(
        _encoder(cold.checkpoint), donor
    )
    assert _distance(_encoder(warm.checkpoint), donor) > 0  # and it trained
    init.unlink()  # a trained checkpoint must not need its init file any more
    manifest = next(Path(warm.run_dir).rglob("manifest.csv"))
    probs = api.predict(warm.checkpoint, manifest)
    assert isinstance(probs, pd.DataFrame) and len(probs) == 569
    assert warm.metrics["test"]["auroc"] > 0.9
