"""The ablation table (each modality removed at test time) through ``api.fit`` on a SYNTHETIC
two-modality table: every row carries a paired-bootstrap delta that a recomputation matches."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import synthetic_table, table_config

from medmodal import api
from medmodal.evaluate import EvalSpec, paired_bootstrap_delta

N_BOOT = 200


@pytest.mark.slow  # trains a model and bootstraps (~7 s)
def test_ablation_delta_is_present_consistent_and_recomputable(tmp_path: Path) -> None:
    frame = synthetic_table(300, noise=0.3, rows_per_patient=(1, 2))
    cfg = table_config(frame, tmp_path / "abl", evaluate={"bootstrap": N_BOOT})
    cfg["data"]["schema"]["modalities"] = {  # "signal" holds x1 (decides the label), "noise" not
        "signal": {"type": "tabular", "columns": ["x1"]},
        "noise": {"type": "tabular", "columns": ["x2", "const"]},
    }
    mlp = {"name": "mlp", "hidden": [16], "dropout": 0.0}
    cfg["model"]["encoders"] = {"signal": mlp, "noise": mlp}
    run = api.fit(cfg, progress=False)
    test, table = run.metrics["test"], run.metrics["test"]["ablation"]
    assert set(table) == {"signal", "noise"} and set(run.ablation_probs) == set(table)
    saved = pd.read_csv(run.run_dir / "predictions_test.csv")
    y = (saved["label"] == "pos").to_numpy().astype(int)
    groups = saved["patient_id"].to_numpy()
    assert saved["patient_id"].duplicated().any()  # the bootstrap must resample whole patients
    for m, row in table.items():
        keys = ("delta_auroc", "delta_low", "delta_high", "p_value")
        assert all(isinstance(row[k], float) and math.isfinite(row[k]) for k in keys), row
        assert row["delta_low"] <= row["delta_auroc"] <= row["delta_high"], row
        assert row["delta_auroc"] == pytest.approx(row["auroc"] - test["auroc"], abs=1e-12)
        spec = EvalSpec.for_task("binary", ["neg", "pos"], n_boot=N_BOOT, seed=cfg["seed"])
        again = paired_bootstrap_delta(
            y, run.ablation_probs[m], run.test_probs, spec, metric="auroc", groups=groups
        )
        recomputed = [again[k] for k in ("delta", "low", "high", "p_value")]
        assert recomputed == pytest.approx([row[k] for k in keys], abs=1e-12)
    # removing the modality that decides the label costs AUROC beyond doubt
    assert table["signal"]["delta_high"] < -0.1, table
    assert table["signal"]["delta_auroc"] < table["noise"]["delta_auroc"], table


def test_single_modality_runs_have_no_ablation(tmp_path: Path) -> None:
    run = api.fit(table_config(synthetic_table(120), tmp_path / "one"), progress=False)
    assert "ablation" not in run.metrics["test"] and run.ablation_probs == {}
    assert np.isfinite(run.metrics["test"]["auroc"])
