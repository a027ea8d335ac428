"""Hyper-parameter search touches only train/val while searching, then tests once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import wdbc_config

from medmodal.tune import tune


@pytest.mark.slow
def test_tune_on_wdbc(tmp_path: Path) -> None:
    cfg = wdbc_config(
        tmp_path,
        name="tune",
        model={"encoders": {"record": {"name": "mlp", "hidden": [32]}}},
        train={"epochs": 8},
        evaluate={"bootstrap": 100},
    )
    space = {
        "train.lr": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
        "model.fusion.name": {"type": "categorical", "choices": ["concat", "mean"]},
    }
    run, trials = tune(cfg, space, n_trials=3)
    assert len(trials) == 3 and all("val_auroc" in t for t in trials)
    assert len({t["params"]["train.lr"] for t in trials}) == 3
    saved = json.loads((tmp_path / "tuning.json").read_text())
    best = max(trials, key=lambda t: t["val_auroc"])
    assert saved["best_params"] == best["params"]
    assert run.metrics["test"]["auroc"] > 0.9
    # While searching, no trial saw the test split.
    for t in range(3):
        assert json.loads((tmp_path / "trials" / f"{t:03d}" / "metrics.json").read_text())[
            "n"
        ].keys() == {"train", "val"}
