"""Calibration and uncertainty (issue 17, Trust): temperature scaling, split-conformal sets and
subgroup metrics. Mechanics on SYNTHETIC logits and probabilities; one real-data slow test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import synthetic_table, table_config
from scipy.special import expit, softmax

from medmodal import api
from medmodal.checkpoint import read_checkpoint, save_checkpoint
from medmodal.config import load_config
from medmodal.data.manifest import LabelMap
from medmodal.errors import ConfigError
from medmodal.evaluate import EvalSpec
from medmodal.evaluate.conformal import (
    ConformalFit,
    conformal_quantile,
    fit_conformal,
    set_summary,
)
from medmodal.evaluate.subgroups import group_labels, subgroup_metrics
from medmodal.evaluate.temperature import fit_temperature, nll
from medmodal.predictor import Predictor
from medmodal.run import run_trust_summary

pytestmark = pytest.mark.usefixtures("one_thread")


# -- temperature scaling -----------------------------------------------------------------------
@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_temperature_recovers_a_known_t_and_lowers_nll(task: str) -> None:
    """True logits z give the labels; the model reports z * T0 (over-confident for T0 > 1)."""
    rng = np.random.default_rng(0)
    n, t0 = 20_000, np.array([2.5]) if task != "multilabel" else np.array([2.5, 0.5, 1.0])
    if task == "multiclass":
        z = rng.normal(scale=1.5, size=(n, 4))
        y = np.array([rng.choice(4, p=p) for p in softmax(z, axis=1)])
    else:
        z = rng.normal(scale=1.5, size=(n, len(t0)))
        y = (rng.random(z.shape) < expit(z)).astype(int)
        if task == "binary":
            z, y = z[:, 0], y[:, 0]
    observed = z * (t0 if task == "multilabel" else t0[0])
    t = fit_temperature(observed, y, task)
    assert t.shape == t0.shape
    np.testing.assert_allclose(t, t0, rtol=0.08)
    assert nll(observed / t, y, task) < nll(observed, y, task) - 0.01


def test_temperature_refuses_non_finite_logits() -> None:
    with pytest.raises(ValueError, match="finite"):
        fit_temperature(np.array([0.1, np.nan]), np.array([0, 1]), "binary")


# -- conformal sets ----------------------------------------------------------------------------
def _draw(rng: np.random.Generator, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exchangeable samples: probabilities and a label drawn from them (calibrated model)."""
    p = softmax(rng.normal(scale=2.0, size=(n, k)), axis=1)
    y = (p.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1)
    return p, np.minimum(y, k - 1)


@pytest.mark.parametrize("method", ["lac", "aps"])
def test_split_conformal_coverage_is_nominal_over_many_draws(method: str) -> None:
    rng = np.random.default_rng(1)
    coverages, sizes = [], []
    for draw in range(100):
        p_cal, y_cal = _draw(rng, 300, 5)
        p_test, y_test = _draw(rng, 300, 5)
        ids = [f"d{draw}_{i}" for i in range(600)]
        fit = fit_conformal(p_cal, y_cal, "multiclass", method, 0.9, ids[:300])
        sets = fit.sets(p_test, "multiclass", ids[300:])
        summary = set_summary(y_test, sets, "multiclass", list("abcde"))
        coverages.append(summary["coverage"])
        sizes.append(summary["mean_set_size"])
    assert 0.885 <= np.mean(coverages) <= 0.92, np.mean(coverages)
    assert 1 < np.mean(sizes) < 5
    if method == "aps":
        assert sets[np.arange(300), p_test.argmax(axis=1)].all()  # the top class is always in


def test_binary_is_two_classes_and_multilabel_is_per_label_lac() -> None:
    rng = np.random.default_rng(2)
    p = rng.random(4000)
    y = (rng.random(4000) < p).astype(int)
    fit = fit_conformal(p[:2000], y[:2000], "binary", "aps", 0.8, [str(i) for i in range(2000)])
    sets = fit.sets(p[2000:], "binary", [str(i) for i in range(2000, 4000)])
    assert sets.shape == (2000, 2)
    assert abs(set_summary(y[2000:], sets, "binary", ["neg", "pos"])["coverage"] - 0.8) < 0.03
    pm = rng.random((4000, 3))
    ym = (rng.random((4000, 3)) < pm).astype(int)
    fit = fit_conformal(pm[:2000], ym[:2000], "multilabel", "lac", 0.9, [])
    assert len(fit.qhat) == 3
    summary = set_summary(ym[2000:], fit.sets(pm[2000:], "multilabel", []), "multilabel", "abc")
    for label in "abc":
        assert abs(summary["per_class"][label]["coverage"] - 0.9) < 0.03
    assert summary["joint_coverage"] < summary["coverage"]
    with pytest.raises(ValueError, match="per-label lac"):
        fit_conformal(pm, ym, "multilabel", "aps", 0.9, [])


def test_quantile_uses_the_finite_sample_rank() -> None:
    scores = np.arange(1, 10) / 10  # n = 9: rank ceil(10 * 0.9) = 9, the largest
    assert conformal_quantile(scores, 0.9) == pytest.approx(0.9)
    assert conformal_quantile(scores, 0.5) == pytest.approx(0.5)  # rank ceil(5) = 5
    assert conformal_quantile(scores[:5], 0.9) == np.inf  # too few: every class in every set
    fit = ConformalFit("lac", 0.9, [np.inf], 5)
    assert fit.sets(np.array([[0.9, 0.1]]), "multiclass", ["a"]).all()


# -- subgroups ---------------------------------------------------------------------------------
def test_subgroup_bands_unknowns_and_cis() -> None:
    labels = group_labels([12, 40, 59.9, 60, 95, None, "n/a"], bins=[40, 60])
    assert labels == ["< 40", "[40, 60)", "[40, 60)", ">= 60", ">= 60", "unknown", "unknown"]
    assert group_labels(["F", "M", np.nan, " "]) == ["F", "M", "unknown", "unknown"]
    rng = np.random.default_rng(3)
    p = rng.random(200)
    y = (rng.random(200) < p).astype(int)
    sex = ["F", "M"] * 100
    out = subgroup_metrics(
        y,
        p,
        EvalSpec.for_task("binary", ["neg", "pos"], n_boot=50),
        {"sex": sex},
        patients=[str(i) for i in range(200)],
        metrics=("auroc", "recall"),
    )
    assert set(out["sex"]) == {"F", "M"} and out["sex"]["F"]["n"] == 100
    ci = out["sex"]["F"]["ci"]["auroc"]
    assert ci["low"] <= out["sex"]["F"]["values"]["auroc"] <= ci["high"]


# -- options -----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, 1, 1.5, -0.1])
def test_coverage_outside_zero_one_is_a_config_error_naming_it(value: float) -> None:
    with pytest.raises(ConfigError, match=r"evaluate\.conformal\.coverage"):
        load_config({"evaluate": {"conformal": {"method": "lac", "coverage": value}}})


def test_misspelled_or_unknown_trust_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown option 'evaluate\.calibrate\.methd'"):
        load_config({"evaluate": {"calibrate": {"methd": "temperature"}}})
    with pytest.raises(ConfigError, match=r"evaluate\.conformal\.method"):
        load_config({"evaluate": {"conformal": {"method": "raps"}}})


def test_trust_without_a_validation_split_or_a_bad_subgroup_fails_before_training(
    tmp_path: Path,
) -> None:
    frame = synthetic_table(120)
    cfg = table_config(
        frame,
        tmp_path / "noval",
        data={"val_fraction": 0.0},
        evaluate={"calibrate": {"method": "temperature"}},
    )
    with pytest.raises(ConfigError, match=r"evaluate\.calibrate\.method .*no validation rows"):
        api.fit(cfg, progress=False)
    cfg = table_config(frame, tmp_path / "sub")
    cfg["data"]["schema"]["subgroups"] = {"sex": {"column": "gender"}}
    with pytest.raises(ConfigError, match=r"subgroups\.sex\.column: 'gender'"):
        api.fit(cfg, progress=False)
    cfg["data"]["schema"]["subgroups"] = {"age": {"column": "x1", "bins": [60, 40]}}
    with pytest.raises(ConfigError, match=r"subgroups\.age.*strictly ascending"):
        api.fit(cfg, progress=False)


@pytest.mark.parametrize("option", ["calibrate", "conformal"])
def test_survival_refuses_temperature_and_conformal(option: str) -> None:
    from medmodal.run.steps import check_trust

    method = "temperature" if option == "calibrate" else "lac"
    cfg = load_config({"evaluate": {option: {"method": method}}})
    survival = LabelMap("survival", ["event"], [1.0, 2.0])
    with pytest.raises(ConfigError, match=rf"evaluate\.{option}\.method: a survival target"):
        check_trust(EvalSpec.from_config(cfg, survival), has_val=True)
    check_trust(EvalSpec.from_config(load_config({}), survival), has_val=True)


# -- one run: fitted on validation, stored, applied by predict and evaluate ---------------------
@pytest.fixture(scope="module")
def trusted_run(tmp_path_factory: pytest.TempPathFactory) -> api.RunResult:
    frame = synthetic_table(400, noise=0.3, split=(0.5, 0.25, 0.25))
    frame["sex"] = np.where(np.arange(400) % 3 == 0, "female", "male")
    frame["age"] = np.arange(400) % 90
    out = tmp_path_factory.mktemp("trust")
    cfg = table_config(
        frame,
        out,
        train={"epochs": 8, "lr": 0.05},
        evaluate={
            "calibrate": {"method": "temperature"},
            "conformal": {"method": "aps"},
            "bootstrap": 50,
            "report": True,
        },
    )
    cfg["data"]["schema"]["subgroups"] = {
        "sex": {"column": "sex"},
        "age": {"column": "age", "bins": [30, 60]},
    }
    return api.fit(cfg, progress=False)


def test_temperature_and_sets_are_stored_and_applied_by_predict(trusted_run: api.RunResult) -> None:
    body = read_checkpoint(trusted_run.checkpoint)
    assert body["calibration"]["method"] == "temperature"
    assert body["conformal"]["method"] == "aps" and body["conformal"]["n"] > 0
    predictor = Predictor.load(trusted_run.checkpoint)
    np.testing.assert_allclose(predictor.temperature, body["calibration"]["temperature"])
    assert abs(float(predictor.temperature[0]) - 1.0) > 0.01  # a real change, not a no-op
    manifest = trusted_run.run_dir.parent / "manifest.csv"
    frame = pd.read_csv(manifest)
    pred = api.predict(trusted_run.checkpoint, frame[frame["split"] == "test"])
    saved = pd.read_csv(trusted_run.run_dir / "predictions_test.csv", keep_default_na=False)
    np.testing.assert_allclose(pred["prob_pos"], saved["prob_pos"], atol=1e-6)
    assert list(pred["prediction_set"]) == list(saved["prediction_set"])
    pairs = zip(pred["predicted"], pred["prediction_set"], strict=True)
    assert all(p in s.split("|") for p, s in pairs)
    raw = predictor.probs_from_logits(torch.tensor([[2.0]]), calibrated=False)
    cal = predictor.probs_from_logits(torch.tensor([[2.0]]))
    assert raw[0] == pytest.approx(expit(2.0)) and cal[0] == pytest.approx(
        expit(2.0 / predictor.temperature[0])
    )


def test_run_reports_before_after_coverage_and_subgroups(trusted_run: api.RunResult) -> None:
    m = trusted_run.metrics
    assert (
        m["fitted_on_val"]["calibration"]["val_nll_after"]
        <= m["fitted_on_val"]["calibration"]["val_nll_before"]
    )
    t = run_trust_summary(trusted_run.run_dir)
    assert set(t) >= {"ece_before", "ece_after", "brier_before", "brier_after", "coverage"}
    assert t["mean_set_size"] >= 1 and set(t["per_class"]) == {"neg", "pos"}
    assert t == run_trust_summary(trusted_run)
    sex = m["test"]["subgroups"]["sex"]
    assert set(sex) == {"female", "male"} and "auroc" in sex["male"]["ci"]
    assert set(m["test"]["subgroups"]["age"]) == {"< 30", "[30, 60)", ">= 60"}
    html = (trusted_run.run_dir / "report.html").read_text()
    for needle in (
        "before temperature scaling",
        "after temperature scaling",
        "Conformal",
        "Metrics per subgroup",
        "[30, 60)",
    ):
        assert needle in html


def test_evaluate_uses_the_stored_fit(trusted_run: api.RunResult, tmp_path: Path) -> None:
    manifest = trusted_run.run_dir.parent / "manifest.csv"
    m = api.evaluate(trusted_run.checkpoint, manifest, split="test", bootstrap=0)
    assert m["conformal"]["coverage"] == trusted_run.metrics["test"]["conformal"]["coverage"]
    assert m["calibration"]["ece_after"] == pytest.approx(
        trusted_run.metrics["test"]["calibration"]["ece_after"]
    )


def test_old_checkpoint_without_trust_fields_loads_and_predicts(
    trusted_run: api.RunResult, tmp_path: Path
) -> None:
    body = read_checkpoint(trusted_run.checkpoint)
    for key in ("calibration", "conformal", "format", "format_version", "versions"):
        body.pop(key)
    body["config"]["evaluate"].pop("calibrate")
    body["config"]["evaluate"].pop("conformal")
    body["schema"].pop("subgroups")
    old = save_checkpoint(tmp_path / "old.pt", body)
    predictor = Predictor.load(old)
    assert predictor.temperature is None and predictor.conformal is None
    frame = pd.read_csv(trusted_run.run_dir.parent / "manifest.csv")
    pred = api.predict(old, frame.head(20))
    assert "prediction_set" not in pred.columns and len(pred) == 20


def test_cross_validation_pools_each_folds_sets_and_temperatures(tmp_path: Path) -> None:
    cfg = table_config(
        synthetic_table(160),
        tmp_path,
        data={"val_fraction": 0.3},
        evaluate={"calibrate": {"method": "temperature"}, "conformal": {"method": "lac"}},
    )
    cv = api.cross_validate(cfg, k=2, progress=False)
    assert cv.pooled["conformal"]["n"] == 160 and cv.pooled["conformal"]["qhat"] is None
    assert cv.pooled["calibration"]["ece_before"] is not None
    assert "prediction_set" in cv.predictions.columns
    assert all(r.metrics["fitted_on_val"]["conformal"]["n"] > 0 for r in cv.folds)


# -- real data ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_lac_coverage_is_near_nominal_on_an_exchangeable_pneumoniamnist_split(
    data_dir: Path, tmp_path: Path
) -> None:
    """Real chest X-rays split at random (calibration and test exchangeable; the official test
    split is not: its coverage is measured by the benchmark, not asserted here)."""
    image = {
        "type": "image",
        "column": "image",
        "allow_missing": False,
        "preprocess": {"size": [28, 28], "channels": 1, "normalize": {"mean": [0.5], "std": [0.5]}},
    }
    schema = {
        "id_column": "sample_id",
        "patient_column": "patient_id",
        "target": {
            "task": "binary",
            "column": "label",
            "classes": ["normal", "pneumonia"],
            "positive": "pneumonia",
        },
        "modalities": {"image": image},
    }
    cfg = {
        "name": "pneumonia_conformal",
        "seed": 0,
        "output_dir": str(tmp_path),
        "data": {
            "dataset": "pneumoniamnist",
            "data_dir": str(data_dir),
            "schema": schema,
            "val_fraction": 0.3,
            "test_fraction": 0.3,
            "audit": False,
        },
        "model": {"encoders": {"image": {"name": "baseline_cnn"}}},
        "train": {"epochs": 3, "batch_size": 128, "threads": 1},
        "evaluate": {
            "bootstrap": 0,
            "report": False,
            "calibrate": {"method": "temperature"},
            "conformal": {"method": "lac", "coverage": 0.9},
        },
    }
    run = api.fit(cfg, progress=False)
    fit = run.metrics["fitted_on_val"]["calibration"]
    assert fit["val_nll_after"] <= fit["val_nll_before"] + 1e-9
    t = run_trust_summary(run)
    assert run.metrics["n"]["test"] > 1500
    assert abs(t["coverage"] - 0.9) < 0.03, t
    assert t["ece_after"] < 0.05, t
