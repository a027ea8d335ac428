"""Classical learners as medmodal models: config checks, every learner, features of every
modality type (fitted on the training rows only), checkpoints that load with weights_only and
predict the same, calibration and conformal sets, survival, explanations, ONNX, the service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from medmodal import api
from medmodal.classical.features import FEATURES
from medmodal.classical.fit import stack_inputs
from medmodal.classical.learners import LEARNERS
from medmodal.config import load_config
from medmodal.datasets import get_dataset
from medmodal.datasets.probe import probe_config
from medmodal.errors import CheckpointError, ConfigError
from medmodal.predictor import Predictor

pytestmark = pytest.mark.usefixtures("one_thread")


def wdbc_config(out: Path, model: dict[str, Any], **evaluate: Any) -> dict[str, Any]:
    return {
        "name": out.name,
        "seed": 0,
        "output_dir": str(out),
        "data": {"dataset": "wdbc", "audit": False},
        "model": model,
        "train": {"epochs": 3, "threads": 1},
        "evaluate": {"bootstrap": 0, "report": False, **evaluate},
    }


@pytest.fixture(scope="module")
def wdbc_logistic(tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("wdbc") / "lr"
    cfg = wdbc_config(
        out,
        {"learner": {"name": "logistic", "C": 0.5}},
        calibrate={"method": "temperature"},
        conformal={"method": "lac"},
        report=True,
    )
    return api.fit(cfg, progress=False)


# -- config --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "needle"),
    [
        ({"learner": "lightgmb"}, "unknown learner 'lightgmb'; known:"),
        ({"learner": {"name": "logistic", "CC": 1}}, "unknown option 'CC'; allowed: C"),
        ({"learner": "logistic", "features": {"record": "fieldz"}}, "unknown feature extractor"),
        (
            {"learner": "logistic", "features": {"record": {"name": "tfidf", "min_dff": 2}}},
            "min_dff",
        ),
        ({"features": {"record": "fields"}}, "inputs of a classical model.learner"),
        ({"learner": "logistic", "ensemble": {}}, "exclude each other"),
        ({"ensemble": {"learners": ["svn"]}}, "unknown learner 'svn'"),
        ({"ensemble": {"rounds": 0}}, "rounds"),
    ],
)
def test_config_typos_are_config_errors(model: dict[str, Any], needle: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        api.fit(wdbc_config(tmp_path / "x", model), progress=False)


def test_learner_task_and_feature_type_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not fit a binary target.*logistic"):
        api.fit(wdbc_config(tmp_path / "a", {"learner": "coxph"}), progress=False)
    with pytest.raises(ConfigError, match="reads image inputs, not tabular; for tabular: fields"):
        api.fit(
            wdbc_config(tmp_path / "b", {"learner": "logistic", "features": {"record": "pixels"}})
        )
    with pytest.raises(ConfigError, match="not modalities of this data"):
        api.fit(wdbc_config(tmp_path / "c", {"learner": "logistic", "features": {"img": "pixels"}}))


def test_models_list_names_learners_and_features() -> None:
    assert {"logistic", "lightgbm", "hist_gb", "svm", "coxph", "rsf", "gb_survival"} <= set(
        LEARNERS.names()
    )
    assert {"pixels", "histogram", "texture", "tfidf", "embedding", "audio_stats", "lead_stats",
            "beat_shape", "fields"} <= set(FEATURES.names())  # fmt: skip


# -- a classical model is a medmodal model -------------------------------------------------------
def test_checkpoint_loads_weights_only_and_predicts_the_same(wdbc_logistic: Any) -> None:
    run = wdbc_logistic
    body = torch.load(run.checkpoint, weights_only=True)  # no pickle of sklearn objects
    assert "_extra_state" in body["model_state"]
    p = Predictor.load(run.checkpoint)
    pred = api.predict(run.checkpoint, run.run_dir / "data" / "manifest.csv")
    test = pd.read_csv(run.run_dir / "predictions_test.csv")
    both = test.merge(pred, on="sample_id", suffixes=("", "_again"))
    assert np.allclose(both["prob_malignant"], both["prob_malignant_again"], atol=1e-6)
    assert run.metrics["test"]["auroc"] > 0.95
    assert run.metrics["model"]["kind"] == "classical"
    assert p.temperature is not None and p.conformal is not None  # fitted on validation
    assert "prediction_set" in test.columns
    assert (run.run_dir / "report.html").is_file()
    assert "logistic on record: fields" in (run.run_dir / "report.html").read_text()


def test_evaluate_and_cross_validate(wdbc_logistic: Any, tmp_path: Path) -> None:
    run = wdbc_logistic
    frame = pd.read_csv(run.run_dir / "data" / "manifest.csv")
    test_ids = set(pd.read_csv(run.run_dir / "predictions_test.csv")["sample_id"])
    m = api.evaluate(run.checkpoint, frame[frame["sample_id"].isin(test_ids)])
    assert abs(m["auroc"] - run.metrics["test"]["auroc"]) < 1e-9
    cv = api.cross_validate(wdbc_config(tmp_path / "cv", {"learner": "lightgbm"}), k=3)
    assert cv.pooled["auroc"] > 0.95 and len(cv.folds) == 3


@pytest.mark.parametrize("learner", ["logistic", "lightgbm", "hist_gb", "svm"])
def test_every_classifier_learns_a_multiclass_task(learner: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 240
    x = rng.normal(size=(n, 3))
    y = np.digitize(x[:, 0] + 0.3 * rng.normal(size=n), [-0.5, 0.5])
    frame = pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "a": x[:, 0], "b": x[:, 1],
                          "c": x[:, 2], "y": np.array(["lo", "mid", "hi"])[y]})  # fmt: skip
    frame.to_csv(tmp_path / "m.csv", index=False)
    schema = {"id_column": "sample_id", "target": {"task": "multiclass", "column": "y"},
              "modalities": {"rec": {"type": "tabular", "columns": ["a", "b", "c"]}}}  # fmt: skip
    cfg = {"output_dir": str(tmp_path / "run"), "data": {"manifest": str(tmp_path / "m.csv"),
           "schema": schema, "audit": False}, "model": {"learner": learner},
           "evaluate": {"bootstrap": 0, "report": False}}  # fmt: skip
    run = api.fit(cfg, progress=False)
    assert run.metrics["test"]["accuracy"] > 0.6
    probs = pd.read_csv(run.run_dir / "predictions_test.csv")[["prob_hi", "prob_lo", "prob_mid"]]
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


# -- survival ------------------------------------------------------------------------------------
@pytest.mark.parametrize("learner", ["coxph", "rsf", "gb_survival"])
def test_survival_learners(learner: str, tmp_path: Path) -> None:
    cfg = {"output_dir": str(tmp_path / learner), "data": {"dataset": "veterans", "audit": False},
           "model": {"learner": learner}, "evaluate": {"bootstrap": 0, "report": False}}  # fmt: skip
    run = api.fit(cfg, progress=False)
    assert run.metrics["test"]["c_index"] > 0.55
    pred = pd.read_csv(run.run_dir / "predictions_test.csv")
    surv = pred[[c for c in pred.columns if c.startswith("surv_")]].to_numpy()
    assert ((surv >= 0) & (surv <= 1)).all() and (np.diff(surv, axis=1) <= 1e-9).all()


def test_logistic_hazard_is_refused_for_classical_learners(tmp_path: Path) -> None:
    cfg = {"output_dir": str(tmp_path / "lh"), "data": {"dataset": "veterans", "audit": False},
           "model": {"learner": "coxph", "survival": {"method": "logistic_hazard"}}}  # fmt: skip
    with pytest.raises(ConfigError, match="use cox"):
        api.fit(cfg, progress=False)


# -- features of every modality type -------------------------------------------------------------
@pytest.fixture(scope="module")
def probe_lgb(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    work = tmp_path_factory.mktemp("probe_classical")
    prepared = get_dataset("fusion_probe").prepare(work / "data", n=80, seed=0)
    cfg = probe_config(prepared, work / "run", epochs=1)
    cfg["model"] = {"learner": {"name": "lightgbm", "n_estimators": 30},
                    "features": {"image": ["pixels", {"name": "histogram", "bins": 8}]}}  # fmt: skip
    cfg["data"]["audit"] = False
    return prepared, api.fit(cfg, progress=False)


def test_probe_features_cover_every_modality(probe_lgb: tuple[Any, Any]) -> None:
    prepared, run = probe_lgb
    p = Predictor.load(run.checkpoint)
    assert run.metrics["model"]["features"] == {
        "image": ["pixels", "histogram"], "text": ["tfidf"], "audio": ["audio_stats"],
        "tabular": ["fields"],
    }  # fmt: skip
    ds = p.dataset(pd.read_csv(prepared.manifest), prepared.manifest.parent, None)
    inputs, present = stack_inputs(ds)
    x = p.model.features(inputs, present)
    names = p.model.feature_names()
    assert x.shape == (len(ds), len(names))
    assert any(n.startswith("text:word:") for n in names) and names[-1] == "present:tabular"
    for j, m in enumerate(p.model.modalities):  # absent modality -> NaN features, flag 0
        absent = ~present[m].numpy()
        cols = [i for i, n in enumerate(names) if n.startswith(f"{m}:")]
        if absent.any():
            assert np.isnan(x[np.ix_(absent, cols)]).all()
            assert (x[absent, len(names) - len(p.model.modalities) + j] == 0).all()


def test_features_are_fitted_on_training_rows_only() -> None:
    hist = FEATURES.create("histogram", {"bins": 4}, info={"in_channels": 1, "size": [2, 2]},
                           processor=None)  # fmt: skip
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]], [[[100.0, 100.0], [100.0, 100.0]]]])
    hist.fit(x, np.array([True, False]))  # the second row is not a training row
    assert float(hist.hi_[0]) < 4.0


def test_explain_maps_attributions_back_to_inputs(
    probe_lgb: tuple[Any, Any], tmp_path: Path
) -> None:
    prepared, run = probe_lgb
    api.explain(run.checkpoint, prepared.manifest, tmp_path / "ex", samples=2)
    meta = json.loads((tmp_path / "ex" / "explanations.json").read_text())
    kinds = {(e["modality"], e["method"]): e for e in meta["samples"][0]["explanations"]}
    assert kinds[("image", "feature_occlusion")]["shape"] == [28, 28]  # pixels
    assert kinds[("text", "feature_occlusion")]["kind"] == "tokens"  # words
    assert kinds[("audio", "feature_occlusion")]["kind"] == "spectrogram"  # time x frequency
    assert kinds[("tabular", "feature_occlusion")]["kind"] == "features"  # record fields
    with pytest.raises(ConfigError, match="feature_occlusion"):
        api.explain(run.checkpoint, prepared.manifest, tmp_path / "g", methods=["gradcam"])


# -- ONNX ----------------------------------------------------------------------------------------
def test_onnx_export_of_a_classical_learner_matches(wdbc_logistic: Any, tmp_path: Path) -> None:
    from medmodal.classical.onnx import export_classical, onnx_probabilities

    run = wdbc_logistic
    path = api.export(run.checkpoint, tmp_path / "lr.onnx")
    p = Predictor.load(run.checkpoint)
    ds = p.dataset(pd.read_csv(run.run_dir / "data" / "manifest.csv").head(40), None, None)
    x = p.model.features(*stack_inputs(ds))
    assert np.abs(onnx_probabilities(path, x) - p.model.estimator.predict_proba(x)).max() < 1e-4
    export_classical(p, tmp_path / "again.onnx", sample=x)  # parity checked inside


@pytest.mark.slow  # two ensemble / learner fits and an ONNX export
def test_the_service_runs_a_classical_learner_through_onnx(
    wdbc_logistic: Any, tmp_path: Path
) -> None:
    """``serve --runtime onnx`` on a classical checkpoint: medmodal's extractors, then the
    learner's graph; the same probabilities as PyTorch; another model's graph is refused."""
    from medmodal.serve.inference import ModelEntry

    run = wdbc_logistic
    onnx = api.export(run.checkpoint, tmp_path / "lr.onnx")
    torch_entry = ModelEntry("t", run.checkpoint)
    onnx_entry = ModelEntry("o", run.checkpoint, runtime="onnx", onnx_path=onnx)
    rows = pd.read_csv(run.run_dir / "data" / "manifest.csv").head(12)
    cols = torch_entry.predictor.schema.modalities["record"].input_columns()
    samples = [torch_entry.prepare_row({c: float(r[c]) for c in cols}).sample
               for _, r in rows.iterrows()]  # fmt: skip
    a = torch_entry.run_batch(samples)
    b = onnx_entry.run_batch(samples)
    for x, y in zip(a, b, strict=True):
        for k, v in x["probabilities"].items():
            assert abs(v - y["probabilities"][k]) < 1e-4
    # the same learner and features with other weights: refused by the probe rows
    other = api.fit(wdbc_config(tmp_path / "lr2", {"learner": {"name": "logistic", "C": 50.0}}),
                    progress=False)  # fmt: skip
    with pytest.raises(ConfigError, match="not the ONNX graph"):
        ModelEntry("x", other.checkpoint, runtime="onnx", onnx_path=onnx)
    with pytest.raises(ConfigError, match="no ONNX file"):
        ModelEntry("x", other.checkpoint, runtime="onnx", onnx_path=tmp_path / "none.onnx")


def test_onnx_refusals_name_what_exports(tmp_path: Path) -> None:
    cfg = {"output_dir": str(tmp_path / "cox"), "data": {"dataset": "veterans", "audit": False},
           "model": {"learner": "coxph"}, "evaluate": {"bootstrap": 0, "report": False}}  # fmt: skip
    run = api.fit(cfg, progress=False)
    with pytest.raises(ConfigError, match="no ONNX converter"):
        api.export(run.checkpoint, tmp_path / "cox.onnx")


def test_untrusted_types_in_a_stored_learner_are_refused() -> None:
    import skops.io as sio

    from medmodal.classical import persist

    class Evil:  # a type of no trusted library
        pass

    with pytest.raises(CheckpointError, match="does not trust"):
        persist.loads(sio.dumps({"x": Evil()}))


def test_classical_model_config_round_trips() -> None:
    cfg = load_config({"model": {"learner": {"name": "svm", "C": 2.0},
                                 "features": {"x": ["pixels", {"name": "histogram", "bins": 8}]}}})  # fmt: skip
    again = load_config(cfg.to_dict())
    assert again.model == cfg.model


def test_whas500_flags_los_which_equals_the_time_of_in_hospital_deaths(tmp_path: Path) -> None:
    ds = get_dataset("whas500")
    assert "'los'" in ds.info.notes and "40 patients who died in hospital" in ds.info.notes
    frame = pd.read_csv(ds.prepare(tmp_path / "w").manifest)
    same = np.isclose(frame["los"], frame["time"])
    assert same.sum() == 40 and (frame.loc[same, "event"] == 1).all()


def test_small_functions_in_classical_and_ensemble() -> None:
    import ast

    src = Path(__file__).resolve().parents[1] / "src" / "medmodal"
    files = [*(src / "classical").rglob("*.py"), *(src / "ensemble").rglob("*.py"),
             src / "explain" / "occlusion_map.py"]  # fmt: skip
    bad = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                a = node.args
                n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs)
                n -= bool(a.args and a.args[0].arg in ("self", "cls"))
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if n > 8 or lines > 60:
                    bad.append(f"{path.name}:{node.lineno} {node.name} ({n}, {lines})")
    assert not bad, bad


def test_signal_features_defaults_and_rhythm() -> None:
    from medmodal.classical.features import default_features

    record = {"in_channels": 12, "length": 1000, "fs": 100.0}
    beat = {"in_channels": 1, "length": 256, "fs": 360.0}
    assert default_features("signal", record) == ["lead_stats", "rhythm"]
    assert default_features("signal", beat) == ["lead_stats", "beat_shape"]
    x = np.zeros((2, 12, 1000), dtype=np.float32)
    x[:, :, ::80] = 1.0  # a beat every 0.8 s: 75 per minute
    for name, info in (("rhythm", record), ("lead_stats", record), ("beat_shape", beat)):
        e = FEATURES.create(name, {}, info=info, processor=None)
        inp = torch.from_numpy(x if info is record else x[:, :1, :256].copy())
        f = e.transform(inp)
        assert f.shape == (2, len(e.names())) and np.isfinite(f).all()
    hr = FEATURES.create("rhythm", {}, info=record, processor=None).transform(torch.from_numpy(x))
    assert abs(hr[0, 0] - 75.0) < 1.0
