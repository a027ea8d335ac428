"""Survival targets: Efron Cox loss, Breslow baseline, logistic hazard, survival metrics vs
scikit-survival, label checks, events per split, real runs, missing modalities, the what-if."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medmodal import api
from medmodal.checkpoint import read_checkpoint
from medmodal.config import SurvivalOptions
from medmodal.errors import ConfigError, DataError
from medmodal.evaluate import EvalSpec, bootstrap_ci, compute_metrics
from medmodal.evaluate.survival import harrell_weighted
from medmodal.predictor import Predictor
from medmodal.survival import (
    CoxLoss,
    LogisticHazardLoss,
    SurvivalModel,
    breslow,
    cox_efron_nll,
)

sksurv = pytest.importorskip("sksurv")
pytestmark = pytest.mark.usefixtures("one_thread")


def tied_data(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SYNTHETIC (X, time, event) with many tied times (integers 1..8) and censoring."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    time = rng.integers(1, 9, size=n).astype(float)
    event = rng.random(n) < 0.7
    return X, time, event


def test_cox_efron_loss_equals_scikit_survival_with_ties() -> None:
    from sksurv.linear_model.coxph import CoxPHOptimizer

    X, time, event = tied_data()
    w = np.array([0.4, -0.3, 0.2])
    ref = CoxPHOptimizer(X, event, time, alpha=np.zeros(3), ties="efron").nlog_likelihood(w)
    ours = cox_efron_nll(torch.tensor(X @ w), torch.tensor(time), torch.tensor(event * 1.0))
    assert float(ours) == pytest.approx(ref * len(time), rel=1e-10)
    # Breslow's approximation differs when there are ties: the test would catch it.
    breslow_ll = CoxPHOptimizer(X, event, time, alpha=np.zeros(3), ties="breslow")
    assert abs(breslow_ll.nlog_likelihood(w) * len(time) - float(ours)) > 1e-3
    # The module is the mean over events, and is shift invariant (exp of large values is safe).
    y = torch.tensor(np.c_[time, event * 1.0])
    eta = torch.tensor(X @ w)[:, None]
    assert float(CoxLoss()(eta, y)) == pytest.approx(ref * len(time) / event.sum(), rel=1e-9)
    assert float(CoxLoss()(eta + 500.0, y)) == pytest.approx(float(CoxLoss()(eta, y)), rel=1e-9)


def test_cox_loss_fits_the_coefficients_of_scikit_survival() -> None:
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    X, time, event = tied_data(80, seed=1)
    ref = CoxPHSurvivalAnalysis(ties="efron").fit(X, Surv.from_arrays(event, time)).coef_
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200, tolerance_grad=1e-12, line_search_fn="strong_wolfe")
    xt, tt, et = torch.tensor(X), torch.tensor(time), torch.tensor(event * 1.0)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = cox_efron_nll(xt @ w, tt, et)
        loss.backward()
        return loss

    opt.step(closure)
    np.testing.assert_allclose(w.detach().numpy(), ref, atol=1e-5)


def test_breslow_baseline_matches_scikit_survival() -> None:
    from sksurv.linear_model.coxph import BreslowEstimator

    X, time, event = tied_data(60, seed=2)
    eta = X @ np.array([0.5, -0.2, 0.1])
    times, cumhaz = breslow(eta, time, event)
    ref = BreslowEstimator().fit(eta, event, time)
    np.testing.assert_allclose(cumhaz, ref.cum_baseline_hazard_(times), rtol=1e-10)
    model = SurvivalModel(SurvivalOptions(method="cox"))
    model.fit_baseline(torch.tensor(eta)[:, None], time, event)
    grid = np.array([0.5, 1.0, 3.5, 8.0, 20.0])
    curves = model.curves(torch.tensor(eta[:4])[:, None], grid)
    h0 = ref.cum_baseline_hazard_(np.clip(grid, times[0], times[-1]))
    h0[grid < times[0]] = 0.0
    np.testing.assert_allclose(curves, np.exp(-np.exp(eta[:4, None]) * h0), rtol=1e-10)


def test_logistic_hazard_loss_and_curves_by_hand() -> None:
    cuts = torch.tensor([0.0, 1.0, 2.0, 3.0])
    logits = torch.tensor([[0.0, 1.0, -1.0], [0.5, 0.5, 0.5], [2.0, -2.0, 0.0]])
    # event at 1.5 (interval 1); censored at 2.5 (interval 2); event after the last cut (censored).
    y = torch.tensor([[1.5, 1.0], [2.5, 0.0], [9.0, 1.0]])
    sp = (
        torch.nn.functional.softplus
    )  # -log(1 - sigmoid(x)) = softplus(x); -log sigmoid = softplus(-x)
    by_hand = (
        (sp(torch.tensor(0.0)) + sp(torch.tensor(-1.0)))
        + (sp(torch.tensor(0.5)) * 2)
        + (sp(torch.tensor(2.0)) + sp(torch.tensor(-2.0)))
    ) / 3
    assert float(LogisticHazardLoss(cuts)(logits, y)) == pytest.approx(float(by_hand), rel=1e-6)
    model = SurvivalModel(SurvivalOptions(method="logistic_hazard", bins=3))
    model.cuts_ = [0.0, 1.0, 2.0, 3.0]
    surv = model.curves(logits, np.array([0.5, 1.0, 2.5, 3.0, 5.0]))
    s = torch.cumprod(torch.sigmoid(-logits.double()), 1).numpy()
    np.testing.assert_allclose(surv, np.c_[np.ones(3), s[:, 0], s[:, 1], s[:, 2], s[:, 2]])
    np.testing.assert_allclose(model.risk(logits), (1 - s).sum(1))


def test_logistic_hazard_cuts_from_training_event_times() -> None:
    model = SurvivalModel(SurvivalOptions(method="logistic_hazard", bins=4))
    time = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 100.0])
    event = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0])
    cuts = model.fit_cuts(time, event).cuts_
    assert cuts == [0.0, 2.75, 4.5, 6.25, 8.0]  # quantiles of the event times; 100 is censored
    assert model.n_outputs == 4
    back = SurvivalModel(SurvivalOptions(method="logistic_hazard", bins=4))
    assert back.load_state_dict(model.state_dict()).cuts_ == cuts


def test_harrell_c_equals_scikit_survival_with_ties() -> None:
    from sksurv.metrics import concordance_index_censored

    _, time, event = tied_data(120, seed=3)
    risk = np.round(np.random.default_rng(3).normal(size=120), 1)  # tied risks too
    ref = concordance_index_censored(event, time, risk)[0]
    assert harrell_weighted(time, event, risk, np.ones((1, 120)))[0] == pytest.approx(ref)
    m = compute_metrics(np.c_[time, event], risk, "survival", ["event"])
    assert m["c_index"] == pytest.approx(ref)
    # Weights = draw counts: the same as repeating the rows.
    counts = np.random.default_rng(0).integers(0, 3, size=120)
    idx = np.repeat(np.arange(120), counts)
    rep = concordance_index_censored(event[idx], time[idx], risk[idx])[0]
    assert harrell_weighted(time, event, risk, counts[None, :])[0] == pytest.approx(rep)


def test_survival_metrics_with_curves_and_grouped_bootstrap() -> None:
    from sksurv.metrics import concordance_index_ipcw
    from sksurv.util import Surv

    rng = np.random.default_rng(4)
    n = 200
    risk = rng.normal(size=n)
    time = rng.exponential(10 * np.exp(-risk))
    event = rng.random(n) < 0.8
    grid = np.linspace(0, time.max(), 50)
    curves = np.exp(-np.exp(risk)[:, None] * grid[None, :] / 10)
    y, probs = np.c_[time, event], np.c_[risk, curves]
    m = compute_metrics(y, probs, "survival", ["event"], times=grid)
    s = Surv.from_arrays(event, time)
    assert m["c_index_uno"] == pytest.approx(concordance_index_ipcw(s, s, risk, m["uno_tau"])[0])
    assert m["c_index"] > 0.7 and m["mean_auc"] > 0.7 and 0 < m["ibs"] < 0.25
    assert len(m["eval_times"]) == 3 and set(m["calibration"]) == set(m["auc"])
    groups = np.repeat(np.arange(n // 2), 2)
    spec = EvalSpec.for_task("survival", ["event"], n_boot=30, times=grid)
    ci = bootstrap_ci(y, probs, spec, groups=groups)
    for k in ("c_index", "c_index_uno", "mean_auc", "ibs"):
        assert ci[k]["low"] <= ci[k]["value"] <= ci[k]["high"]
    assert ci["c_index"]["n_boot"] == 30


def survival_frame(tmp: Path, n: int = 240, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """SYNTHETIC survival table: x1 drives the hazard; a short note holds x1's sign in words
    and is empty for a third of the rows (a missing modality)."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    t = rng.exponential(20 * np.exp(-1.5 * x1))
    c = rng.exponential(30, size=n)
    note = np.where(x1 > 0, "high marker level", "low marker level")
    note = np.where(rng.random(n) < 0.33, "", note)
    frame = pd.DataFrame(
        {"sample_id": [f"s{i}" for i in range(n)], "x1": x1, "x2": x2, "note": note,
         "time": np.round(np.minimum(t, c), 2), "event": (t <= c).astype(int)}
    )  # fmt: skip
    frame.to_csv(tmp / "manifest.csv", index=False)
    schema = {
        "id_column": "sample_id",
        "target": {"task": "survival", "time_column": "time", "event_column": "event"},
        "modalities": {
            "record": {"type": "tabular", "columns": ["x1", "x2"]},
            "note": {"type": "text", "column": "note"},
        },
    }
    return frame, schema


def fast_config(tmp: Path, schema: dict, **model: object) -> dict:
    return {
        "name": "surv",
        "seed": 0,
        "output_dir": str(tmp / "run"),
        "data": {"manifest": str(tmp / "manifest.csv"), "schema": schema, "audit": False},
        "model": {"encoders": {"record": {"name": "mlp", "hidden": [8]}}, **model},
        "train": {"epochs": 25, "batch_size": 128, "lr": 0.02, "threads": 1, "scheduler": "none"},
        "evaluate": {"bootstrap": 0, "report": False},
    }


@pytest.mark.parametrize(
    "model",
    [
        {"fusion": {"name": "concat"}},
        {"fusion": {"name": "late"}, "survival": {"method": "logistic_hazard", "bins": 5}},
        pytest.param({"fusion": {"name": "attention"}}, marks=pytest.mark.slow),
    ],
)
def test_multimodal_survival_with_a_missing_modality(tmp_path: Path, model: dict) -> None:
    frame, schema = survival_frame(tmp_path)
    cfg = fast_config(tmp_path, schema, modality_dropout=0.2, **model)
    cfg["train"]["aux_loss_weight"] = 0.5
    run = api.fit(cfg, progress=False)
    test = run.metrics["test"]
    assert run.metrics["missing_modalities"]["test"]["note"]["absent"] > 0
    assert test["c_index"] > 0.6 and "ablation" in test
    body = read_checkpoint(run.checkpoint)
    if model.get("survival") is None:  # Cox: the Breslow baseline is stored as plain floats
        assert all(type(v) is float for v in body["survival"]["baseline_cumhaz_"])
    pred = api.predict(run.checkpoint, frame.drop(columns=["note", "time", "event"]))
    assert (
        pred["risk"].notna().all()
        and (pred.filter(like="surv_").diff(axis=1).iloc[:, 1:] <= 1e-9).all().all()
    )
    again = Predictor.load(run.checkpoint)
    assert again.survival is not None and again.label_map.times == body["label_map"]["times"]


def test_the_service_refuses_a_survival_checkpoint(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from medmodal.serve.inference import ModelEntry

    _, schema = survival_frame(tmp_path, n=40)
    cfg = fast_config(tmp_path, schema)
    cfg["train"]["epochs"] = 1
    run = api.fit(cfg, progress=False)
    with pytest.raises(ConfigError, match=r"survival models are not served \(use predict"):
        ModelEntry("risk", run.checkpoint)


@pytest.mark.parametrize(
    "time, event, reason",
    [(-1.0, 1, "negative"), (None, 0, "missing or not a number"), (3.0, 2, "must be 0 or 1")],
)
def test_bad_survival_labels_name_the_rows(tmp_path: Path, time, event, reason) -> None:
    frame, schema = survival_frame(tmp_path, n=40)
    frame.loc[[3, 7], "time"] = time
    frame.loc[[3, 7], "event"] = event
    frame.to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(DataError, match=rf"2 row\(s\).*'s3'.*{reason}.*'s7'"):
        api.fit(fast_config(tmp_path, schema), progress=False)
    cfg = fast_config(tmp_path, schema)
    cfg["data"]["skip_bad"] = True
    run = api.fit(cfg, progress=False)
    assert sorted(b["sample_id"] for b in run.bad_samples) == ["s3", "s7"]


def test_a_split_without_events_is_a_clear_error(tmp_path: Path) -> None:
    frame, schema = survival_frame(tmp_path, n=60)
    frame["split"] = np.where(
        np.arange(60) < 40, "train", np.where(np.arange(60) < 50, "val", "test")
    )
    frame.loc[frame["split"] == "test", "event"] = 0
    frame.to_csv(tmp_path / "manifest.csv", index=False)
    schema["split_column"] = "split"
    with pytest.raises(DataError, match="the test split has no event.*10 rows"):
        api.fit(fast_config(tmp_path, schema), progress=False)


def test_survival_options_are_strict(tmp_path: Path) -> None:
    _, schema = survival_frame(tmp_path, n=40)
    with pytest.raises(ConfigError, match="unknown option 'model.survival.bin'"):
        api.fit(fast_config(tmp_path, schema, survival={"bin": 4}), progress=False)
    cfg = fast_config(tmp_path, schema)
    cfg["train"]["monitor"] = "accuracy"
    with pytest.raises(ConfigError, match="no meaning for a survival target"):
        api.fit(cfg, progress=False)
    cfg["train"].update(monitor="c_index", class_weights="balanced")
    with pytest.raises(ConfigError, match="a survival target takes none of them"):
        api.fit(cfg, progress=False)


@pytest.mark.slow
def test_real_run_on_whas500_beats_chance(tmp_path: Path) -> None:
    run = api.fit(
        {
            "name": "whas500", "seed": 0, "output_dir": str(tmp_path),
            "data": {"dataset": "whas500", "val_fraction": 0.2},
            "model": {"encoders": {"record": {"name": "mlp", "hidden": [32], "dropout": 0.1}}},
            "train": {"epochs": 60, "batch_size": 320, "lr": 0.01, "weight_decay": 1e-3,
                      "optimizer": "adamw", "threads": 1},
            "evaluate": {"bootstrap": 100},
        },
        progress=False,
    )  # fmt: skip
    test = run.metrics["test"]
    assert test["c_index"] > 0.6 and test["ci"]["c_index"]["low"] > 0.5
    assert (tmp_path / "report.html").read_text().count("Kaplan-Meier") >= 1


def test_whatif_on_gbsg2_writes_outputs_with_the_caveat(tmp_path: Path) -> None:
    from medmodal.whatif import CAVEAT

    run = api.fit(
        {
            "name": "gbsg2", "seed": 0, "output_dir": str(tmp_path / "model"),
            "data": {"dataset": "gbsg2", "val_fraction": 0.2, "test_fraction": 0.0, "audit": False},
            "model": {"encoders": {"record": {"name": "mlp", "hidden": [16]}}},
            "train": {"epochs": 15, "batch_size": 600, "lr": 0.02, "threads": 1},
            "evaluate": {"bootstrap": 0, "report": False},
        },
        progress=False,
    )  # fmt: skip
    manifest = tmp_path / "model" / "data" / "manifest.csv"
    res = api.whatif(run.checkpoint, manifest, "horTh", out_dir=tmp_path / "wi", n_boot=50)
    s = res.summary
    assert s["values"] == ["no", "yes"] and s["caveat"] == CAVEAT
    eff = s["effects"][0]
    assert eff["mean_delta_rmst_ci"][0] <= eff["mean_delta_rmst"] <= eff["mean_delta_rmst_ci"][1]
    assert 0.3 < eff["hazard_ratio"] < 3 and 0.5 < s["overlap"]["auroc"] < 1
    csv = pd.read_csv(tmp_path / "wi" / "whatif.csv")
    assert len(csv) == 686 and {"propensity", "rmst_no", "rmst_yes", "caveat"} <= set(csv)
    assert "not treatment advice" in (tmp_path / "wi" / "whatif.json").read_text()
    assert (tmp_path / "wi" / "whatif.png").stat().st_size > 10_000
    with pytest.raises(ConfigError, match="'time' is not an input of the model"):
        api.whatif(run.checkpoint, manifest, "time", n_boot=0)
