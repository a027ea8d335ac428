"""Ensembles chosen on validation: greedy selection with replacement, a planted test-set signal
the selection cannot see, ``--preset best`` as one checkpoint (report, reload, the service)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from medmodal import api
from medmodal.classical.learners import LEARNERS, LearnerCapabilities
from medmodal.ensemble import train as ensemble_train
from medmodal.ensemble.presets import apply_preset
from medmodal.ensemble.select import greedy_select
from medmodal.errors import ConfigError
from medmodal.predictor import Predictor

pytestmark = pytest.mark.usefixtures("one_thread")


def auc(y: np.ndarray) -> Any:
    from sklearn.metrics import roc_auc_score

    return lambda p: float(roc_auc_score(y, p))


# -- greedy selection ------------------------------------------------------------------------------
def test_selection_weights_sum_to_one_and_prefer_the_better_member() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = np.clip(y * 0.6 + rng.normal(0.2, 0.25, 400), 0, 1)
    noise = rng.random(400)
    sel = greedy_select([noise, good], auc(y), rounds=10)
    assert np.isclose(sel.weights.sum(), 1.0)
    assert sel.weights[1] > sel.weights[0] and sel.picks[0] == 1
    assert sel.score == max(sel.trajectory)


def test_selection_averages_complementary_members() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 600)
    a = y + rng.normal(0, 1.0, 600)  # two equally good members with independent errors
    b = y + rng.normal(0, 1.0, 600)
    sel = greedy_select([a, b], auc(y), rounds=20)
    assert 0 < sel.weights[0] < 1 and sel.score > max(auc(y)(a), auc(y)(b))


def test_selection_keeps_the_best_prefix() -> None:
    y = np.array([0, 0, 1, 1])
    perfect = np.array([0.1, 0.2, 0.8, 0.9])
    bad = np.array([0.9, 0.8, 0.2, 0.1])
    sel = greedy_select([perfect, bad], auc(y), rounds=5)
    assert sel.weights.tolist() == [1.0, 0.0]


# -- a planted test-set signal -------------------------------------------------------------------
class LeakReader:
    """Predicts from one feature column alone (the planted 'leak'); fits nothing. ``sign`` -1:
    the reverse (high values mean the negative class)."""

    def __init__(self, column: int, sign: float = 1.0) -> None:
        self.column, self.sign = column, sign
        self.classes_ = np.array([0, 1])

    def fit(self, x: np.ndarray, y: np.ndarray) -> LeakReader:
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        p = 1 / (1 + np.exp(-5 * self.sign * np.nan_to_num(x[:, self.column])))
        return np.column_stack([1 - p, p])


@pytest.fixture
def leak_reader() -> Any:
    def build(task: str, seed: int, column: int = 0, sign: float = 1.0) -> LeakReader:
        return LeakReader(column, sign)

    LEARNERS.register(
        "leak_reader", capabilities=LearnerCapabilities(("binary",), handles_nan=True)
    )(build)
    yield
    LEARNERS.unregister("leak_reader")


def planted(tmp_path: Path, n: int = 300) -> dict[str, Any]:
    """x1..x3 carry the label everywhere; 'leak' equals the label on the test rows only (noise on
    train and validation): a selection that saw test predictions would pick its reader."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)
    split = np.array(["train"] * 180 + ["val"] * 60 + ["test"] * 60)
    x = y[:, None] * 1.0 + rng.normal(0, 1.0, (n, 3))
    leak = np.where(split == "test", y, rng.integers(0, 2, n)).astype(float)
    frame = pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "split": split, "leak": leak,
                          "x1": x[:, 0], "x2": x[:, 1], "x3": x[:, 2],
                          "y": np.where(y == 1, "pos", "neg")})  # fmt: skip
    frame.to_csv(tmp_path / "m.csv", index=False)
    schema = {"id_column": "sample_id", "split_column": "split",
              "target": {"task": "binary", "column": "y", "classes": ["neg", "pos"], "positive": "pos"},
              "modalities": {"rec": {"type": "tabular", "columns": ["leak", "x1", "x2", "x3"],
                                     "preprocess": {"clip": None}}}}  # fmt: skip
    return {"name": "leak", "output_dir": str(tmp_path / "run"),
            "data": {"manifest": str(tmp_path / "m.csv"), "schema": schema, "audit": False},
            "model": {"ensemble": {"deep_seeds": 0, "rounds": 10,
                                   "learners": ["logistic", {"name": "leak_reader", "column": 0}]}},
            "evaluate": {"bootstrap": 0, "report": False}}  # fmt: skip


def test_selection_cannot_see_a_planted_test_signal(
    leak_reader: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    real = ensemble_train.greedy_select

    def spy(preds: list[np.ndarray], score: Any, rounds: int = 25) -> Any:
        seen.extend(len(p) for p in preds)
        return real(preds, score, rounds)

    def stack_spy(views: list[np.ndarray], y: np.ndarray, *args: Any) -> Any:
        seen.extend([len(y), *(len(v) for v in views)])
        return real_stack(views, y, *args)

    real_stack = ensemble_train.fit_stack
    monkeypatch.setattr(ensemble_train, "greedy_select", spy)
    monkeypatch.setattr(ensemble_train, "fit_stack", stack_spy)
    run = api.fit(planted(tmp_path), progress=False)
    weights = {c["name"]: c["weight"] for c in run.metrics["model"]["candidates"]}
    assert weights["leak_reader"] == 0.0 and weights["logistic"] == 1.0
    assert set(seen) == {60}  # the validation rows, nothing else
    # the reader is perfect on test: had the selection seen test, the ensemble would be too
    p = Predictor.load(run.checkpoint)
    frame = pd.read_csv(tmp_path / "m.csv")
    test = frame[frame["split"] == "test"]
    ds = p.dataset(test, None, None, with_labels=True)
    from medmodal.classical.fit import stack_inputs

    leak = p.model.members[0].features(*stack_inputs(ds))[:, 0]  # what the reader reads
    assert auc(np.asarray(ds.labels))(LeakReader(0).predict_proba(leak[:, None])[:, 1]) == 1.0
    assert run.metrics["test"]["auroc"] < 0.99


# -- the stack ----------------------------------------------------------------------------------
def test_a_stack_uses_a_reversed_member_that_weights_cannot() -> None:
    from medmodal.ensemble.stack import Stack, fit_stack

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    weak = 1 / (1 + np.exp(-(y - 0.5 + rng.normal(0, 1.5, 300))))
    reversed_ = 1 / (1 + np.exp(y - 0.5 + rng.normal(0, 0.5, 300)))  # informative, upside down
    views = [weak[:, None], reversed_[:, None]]
    score = auc(y)
    greedy = greedy_select(views, lambda p: score(p[:, 0]), rounds=10)
    stack = fit_stack(views, y, [f"p{i}" for i in range(300)], "binary",
                      lambda p: score(p[:, 0]), seed=0)  # fmt: skip
    assert stack is not None and stack.score > greedy.score + 0.1
    assert stack.coef[0, 1] < 0  # it turned the reversed member around
    again = Stack.from_state(stack.state())
    assert np.allclose(again.logits(views), stack.logits(views))
    # no stack when a class has fewer patients than two folds
    assert fit_stack(views, np.r_[1, np.zeros(299)], list(range(300)), "binary", score, 0) is None


@pytest.mark.slow  # two ensemble / learner fits and an ONNX export
def test_the_ensemble_uses_the_stack_when_it_wins_out_of_fold(
    leak_reader: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medmodal.classical import persist

    # the stored readers must load again (this test's own class, trusted for it alone)
    monkeypatch.setattr(
        persist, "TRUSTED_TYPES", (*persist.TRUSTED_TYPES, f"{__name__}.LeakReader")
    )
    cfg = planted(tmp_path)
    cfg["model"]["ensemble"]["learners"] = [
        {"name": "leak_reader", "column": 0},  # noise on validation
        {"name": "leak_reader", "column": 1, "sign": -1.0},  # x1 read upside down
    ]
    run = api.fit(cfg, progress=False)
    sel = run.metrics["model"]["selection"]
    assert sel["stack"]["used"] and sel["stack"]["oof_score"] > sel["val_score"]
    assert "stack" in run.metrics["model"]["describe"]
    p = Predictor.load(run.checkpoint)
    assert p.model.stack is not None and len(p.model.members) == 2
    assert run.metrics["test"]["auroc"] > 0.7  # the reversed reader, turned around
    pred = api.predict(run.checkpoint, tmp_path / "m.csv")
    test = pd.read_csv(run.run_dir / "predictions_test.csv")
    both = test.merge(pred, on="sample_id", suffixes=("", "_again"))
    assert np.allclose(both["prob_pos"], both["prob_pos_again"], atol=1e-6)
    off = {**cfg, "output_dir": str(tmp_path / "off")}
    off["model"] = {"ensemble": {**cfg["model"]["ensemble"], "stack": False}}
    assert api.fit(off, progress=False).metrics["model"]["selection"]["stack"] is None


def test_too_few_selection_rows_give_equal_weights(leak_reader: Any, tmp_path: Path) -> None:
    from medmodal.ensemble.train import scarce_rows

    cfg = planted(tmp_path)
    cfg["model"]["ensemble"]["min_selection_rows"] = 31  # the 60 validation rows hold fewer
    run = api.fit(cfg, progress=False)
    m = run.metrics["model"]
    assert [c["weight"] for c in m["candidates"]] == [0.5, 0.5]
    assert "weighted equally" in m["selection"]["equal_weights"]
    assert m["selection"]["stack"] is None
    y = np.array([0] * 50 + [1] * 9)
    assert "9 rows of a class" in scarce_rows(y, "binary", 2, 10)
    assert scarce_rows(np.r_[y, 1], "binary", 2, 10) is None
    events = np.column_stack([np.arange(20.0), np.r_[np.ones(4), np.zeros(16)]])
    assert "4 events" in scarce_rows(events, "survival", 1, 10)


# -- the best preset -----------------------------------------------------------------------------
def wdbc(tmp_path: Path, **model: Any) -> dict[str, Any]:
    return {"name": "wdbc", "seed": 0, "output_dir": str(tmp_path / "run"),
            "data": {"dataset": "wdbc", "audit": False},
            "model": {"encoders": {"record": {"name": "mlp", "hidden": [16]}}, **model},
            "train": {"epochs": 3, "threads": 1},
            "evaluate": {"bootstrap": 0, "report": True, "calibrate": {"method": "temperature"},
                         "conformal": {"method": "lac"}}}  # fmt: skip


@pytest.fixture(scope="module")
def best_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("best")
    cfg = wdbc(out)
    cfg["model"]["ensemble"] = {"deep_seeds": 2, "learners": ["logistic", "lightgbm"]}
    return api.fit(cfg, progress=False, preset="best")


def test_best_preset_is_one_checkpoint_with_members_weights_and_scores(best_run: Any) -> None:
    m = best_run.metrics["model"]
    assert m["kind"] == "ensemble"
    names = [c["name"] for c in m["candidates"]]
    assert names == ["deep (seed 0)", "logistic", "lightgbm", "deep (seed 1)"]
    assert all(c["val_score"] is not None for c in m["candidates"])
    assert np.isclose(sum(x["weight"] for x in m["members"]), 1.0)
    html = (best_run.run_dir / "report.html").read_text()
    assert "Ensemble members" in html and "lightgbm" in html
    assert list(best_run.run_dir.glob("*.pt")) == [best_run.checkpoint]
    body = torch.load(best_run.checkpoint, weights_only=True)
    assert "_extra_state" in body["model_state"]


def test_best_reloads_into_the_same_predictions(best_run: Any) -> None:
    p = Predictor.load(best_run.checkpoint)
    assert type(p.model).__name__ == "EnsembleModel" and p.temperature is not None
    pred = api.predict(best_run.checkpoint, best_run.run_dir / "data" / "manifest.csv")
    test = pd.read_csv(best_run.run_dir / "predictions_test.csv")
    both = test.merge(pred, on="sample_id", suffixes=("", "_again"))
    assert np.allclose(both["prob_malignant"], both["prob_malignant_again"], atol=1e-6)


def test_the_service_shows_an_ensemble_as_one_model(best_run: Any, tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from medmodal.serve.app import create_app
    from medmodal.serve.audit_log import AuditLog
    from medmodal.serve.auth import TokenStore, create_token
    from medmodal.serve.inference import ModelEntry
    from medmodal.serve.limits import MB, Limits

    token = create_token(tmp_path / "tokens.json", "alice")
    models = {"wdbc": ModelEntry("wdbc", best_run.checkpoint)}
    app = create_app(models, TokenStore.load(tmp_path / "tokens.json"),
                     AuditLog(tmp_path / "a.jsonl"), Limits(max_bytes=MB))  # fmt: skip
    row = pd.read_csv(best_run.run_dir / "data" / "manifest.csv").iloc[0]
    fields = {
        c: float(row[c])
        for c in Predictor.load(best_run.checkpoint).schema.modalities["record"].input_columns()
    }
    with TestClient(app) as c:
        h = {"Authorization": f"Bearer {token}"}
        assert [m["name"] for m in c.get("/v1/models", headers=h).json()["models"]] == ["wdbc"]
        r = c.post("/v1/models/wdbc/predict", headers=h,
                   files={"record": ("r.json", __import__("json").dumps(fields))})  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body["probabilities"]) == {"benign", "malignant"}
    assert body["calibrated_probabilities"] is not None and body["prediction_set"] is not None


def test_ensemble_onnx_export_is_refused(best_run: Any, tmp_path: Path) -> None:
    from medmodal.serve.inference import ModelEntry

    with pytest.raises(ConfigError, match="ensemble"):
        api.export(best_run.checkpoint, tmp_path / "e.onnx")
    with pytest.raises(ConfigError, match="serve it with PyTorch"):  # serve --runtime onnx
        ModelEntry("e", best_run.checkpoint, runtime="onnx", onnx_path=tmp_path / "e.onnx")


def test_presets_and_time_budget(tmp_path: Path) -> None:
    cfg, _ = apply_preset(wdbc(tmp_path), None, "best")
    assert cfg.model.ensemble is not None and cfg.model.ensemble.deep_seeds == 2
    fast, _ = apply_preset({**wdbc(tmp_path), "model": {"ensemble": {}}}, None, "fast")
    assert fast.model.ensemble is None
    with pytest.raises(ConfigError, match="unknown preset 'bets'"):
        apply_preset(wdbc(tmp_path), None, "bets")
    with pytest.raises(ConfigError, match="one classical model.learner"):
        apply_preset({**wdbc(tmp_path), "model": {"learner": "logistic"}}, None, "best")
    run = api.fit(wdbc(tmp_path, ensemble={"deep_seeds": 1, "learners": ["logistic"]}),
                  progress=False, time_budget=1e-6)  # fmt: skip
    cands = run.metrics["model"]["candidates"]
    assert cands[0]["name"] == "deep (seed 0)" and "skipped" not in cands[0]
    assert cands[1]["skipped"] == "time budget spent"


def test_an_ensemble_needs_a_validation_split(tmp_path: Path) -> None:
    cfg = wdbc(tmp_path, ensemble={"deep_seeds": 0})
    cfg["data"]["val_fraction"] = 0.0
    cfg["evaluate"].update(calibrate={"method": "none"}, conformal={"method": "none"})
    with pytest.raises(ConfigError, match="validation split"):
        api.fit(cfg, progress=False)


def test_survival_ensemble_standardises_member_risks(tmp_path: Path) -> None:
    cfg = {"output_dir": str(tmp_path / "s"), "data": {"dataset": "veterans", "audit": False},
           "model": {"encoders": {"record": {"name": "mlp", "hidden": [8]}},
                     "ensemble": {"deep_seeds": 1, "learners": ["coxph", "rsf"]}},
           "train": {"epochs": 5, "batch_size": 256, "threads": 1},
           "evaluate": {"bootstrap": 0, "report": False}}  # fmt: skip
    run = api.fit(cfg, progress=False)
    p = Predictor.load(run.checkpoint)
    assert all(s > 0 for s in p.model.scale) and run.metrics["test"]["c_index"] > 0.55


def test_predict_amp_takes_an_ensemble(best_run: Any) -> None:
    frame = api.predict(best_run.checkpoint, best_run.run_dir / "data" / "manifest.csv", amp=True)
    assert len(frame) == 569 and frame["prob_malignant"].between(0, 1).all()


@pytest.mark.slow  # three medmodal processes (the slow tier holds the CLI processes)
def test_cli_presets_and_models_list(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    import yaml

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "medmodal.cli", *args], capture_output=True,
                              text=True, env={**os.environ, "CI": "true"}, timeout=600)  # fmt: skip

    res = cli("models", "list")
    assert res.returncode == 0 and "lightgbm" in res.stdout and "tfidf" in res.stdout
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(wdbc(tmp_path)))
    res = cli("train", str(cfg), "--preset", "bets")
    assert res.returncode == 2 and "unknown preset 'bets'; presets: best, fast" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_classical_ensemble_on_breastmnist_official_split(data_dir: Path, tmp_path: Path) -> None:
    """Real data: pixels + histogram + texture, logistic / LightGBM / SVM chosen on the official
    validation split; test AUC well above the README's pixel baseline (gradient boosting 0.855)."""
    cfg = {"output_dir": str(tmp_path / "b"), "data": {"dataset": "breastmnist",
           "data_dir": str(data_dir), "audit": False}, "model": {"ensemble": {"deep_seeds": 0}},
           "train": {"threads": 1}, "evaluate": {"bootstrap": 0, "report": False}}  # fmt: skip
    run = api.fit(cfg, progress=False)
    assert run.metrics["test"]["auroc"] > 0.88
    assert {c["name"] for c in run.metrics["model"]["candidates"]} == {
        "logistic",
        "lightgbm",
        "svm",
    }
