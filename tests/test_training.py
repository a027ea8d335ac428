"""End to end on real data: train beats chance, checkpoints round-trip, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import interrupt_fit

from medmodal import api
from medmodal.datasets import get_dataset
from medmodal.errors import DataError, ManifestError


@pytest.fixture(scope="module")
def breast_png(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[Path, Path]:
    """BreastMNIST written out as real PNG files + manifest (the user-data path)."""
    out = tmp_path_factory.mktemp("breast")
    prepared = get_dataset("breastmnist").prepare(out, data_dir, image_format="png")
    return prepared.manifest, prepared.schema


def _config(manifest: Path, schema: Path, out: Path, **train: object) -> dict:
    return {
        "name": "t",
        "seed": 0,
        "output_dir": str(out),
        "data": {"manifest": str(manifest), "schema": str(schema)},
        "model": {"encoders": {"image": {"name": "baseline_cnn"}}},
        "train": {"epochs": 6, "batch_size": 64, "lr": 0.001, "scheduler": "cosine", **train},
        "evaluate": {"bootstrap": 200},
    }


@pytest.fixture(scope="module")
def trained(
    breast_png: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> api.RunResult:
    out = tmp_path_factory.mktemp("run")
    return api.fit(_config(*breast_png, out), progress=False)


@pytest.mark.slow
def test_training_beats_chance_on_real_ultrasound(trained: api.RunResult) -> None:
    test = trained.metrics["test"]
    assert trained.metrics["n"] == {"train": 546, "val": 78, "test": 156}
    assert test["auroc"] > 0.75, test["auroc"]
    lo, hi = test["ci"]["auroc"]["low"], test["ci"]["auroc"]["high"]
    assert lo <= test["auroc"] <= hi
    assert (trained.run_dir / "report.html").stat().st_size > 10_000
    best = [h for h in trained.history if h["best"]][-1]
    assert best["epoch"] == trained.metrics["best_epoch"]


@pytest.mark.slow
def test_checkpoint_round_trip_gives_identical_probabilities(
    trained: api.RunResult, breast_png: tuple[Path, Path]
) -> None:
    manifest, _ = breast_png
    frame = pd.read_csv(manifest)
    test_rows = frame[frame["split"] == "test"]
    pred = api.predict(trained.checkpoint, test_rows, root=manifest.parent)
    saved = pd.read_csv(trained.run_dir / "predictions_test.csv")
    assert list(pred["sample_id"]) == list(saved["sample_id"])
    col = "prob_normal, benign"
    np.testing.assert_allclose(pred[col].to_numpy(), saved[col].to_numpy(), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_predict_folder_of_images(
    trained: api.RunResult, breast_png: tuple[Path, Path], tmp_path: Path
) -> None:
    manifest, _ = breast_png
    folder = manifest.parent / "images" / "test"
    pred = api.predict(trained.checkpoint, folder, out=tmp_path / "p.csv")
    assert len(pred) == 156 and (tmp_path / "p.csv").is_file()
    assert pred["prob_malignant"].between(0, 1).all()


@pytest.mark.slow
def test_same_seed_same_metrics(breast_png: tuple[Path, Path], tmp_path: Path) -> None:
    a = api.fit(_config(*breast_png, tmp_path / "a", epochs=2), progress=False)
    b = api.fit(_config(*breast_png, tmp_path / "b", epochs=2), progress=False)
    assert a.metrics["test"]["auroc"] == b.metrics["test"]["auroc"]
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]


@pytest.mark.slow
def test_resume_after_interruption_matches_uninterrupted(
    breast_png: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = api.fit(_config(*breast_png, tmp_path / "full", epochs=3), progress=False)
    interrupt_fit(  # in the third epoch
        monkeypatch,
        lambda: api.fit(_config(*breast_png, tmp_path / "cut", epochs=3), progress=False),
    )
    resumed = api.fit(_config(*breast_png, tmp_path / "cut", epochs=3), progress=False, resume=True)
    assert [round(h["train_loss"], 6) for h in resumed.history] == [
        round(h["train_loss"], 6) for h in full.history
    ]
    assert resumed.metrics["test"]["auroc"] == pytest.approx(
        full.metrics["test"]["auroc"], abs=1e-9
    )


def _bad_manifest(breast_png: tuple[Path, Path], tmp_path: Path) -> Path:
    manifest, _ = breast_png
    frame = pd.read_csv(manifest)
    train = frame.index[frame["split"] == "train"]
    good = manifest.parent / frame.loc[train[0], "image"]
    trunc = tmp_path / "truncated.png"
    trunc.write_bytes(good.read_bytes()[:60])
    frame["image"] = [str(manifest.parent / p) for p in frame["image"]]
    frame.loc[train[1], "image"] = str(tmp_path / "missing.png")
    frame.loc[train[2], "image"] = str(trunc)
    frame.loc[train[3], "label"] = "cyst"
    out = tmp_path / "bad.csv"
    frame.to_csv(out, index=False)
    return out


def test_bad_input_stops_with_one_clear_message(
    breast_png: tuple[Path, Path], tmp_path: Path
) -> None:
    bad = _bad_manifest(breast_png, tmp_path)
    cfg = _config(bad, breast_png[1], tmp_path / "run", epochs=1)
    with pytest.raises(DataError) as exc:
        api.fit(cfg, progress=False)
    assert "train_00003" in str(exc.value) and "cyst" in str(exc.value)
    cfg["data"]["manifest"] = str(bad)
    frame = pd.read_csv(bad)
    frame.loc[frame["sample_id"] == "train_00003", "label"] = "malignant"
    frame.to_csv(bad, index=False)
    with pytest.raises(DataError, match=r"sample 'train_00001'.*missing.png: file not found"):
        api.fit(cfg, progress=False)


@pytest.mark.slow
def test_skip_bad_lists_every_skipped_sample(breast_png: tuple[Path, Path], tmp_path: Path) -> None:
    bad = _bad_manifest(breast_png, tmp_path)
    cfg = _config(bad, breast_png[1], tmp_path / "run", epochs=1)
    cfg["data"]["skip_bad"] = True
    run = api.fit(cfg, progress=False)
    skipped = {
        d["sample_id"]: d for d in json.loads((run.run_dir / "bad_samples.json").read_text())
    }
    assert set(skipped) == {"train_00001", "train_00002", "train_00003"}
    assert "truncated.png" in skipped["train_00002"]["path"]
    assert run.metrics["n"]["train"] == 546 - 3
    assert "train_00002" in (run.run_dir / "report.html").read_text()


def test_empty_training_split_is_an_error(breast_png: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, schema = breast_png
    frame = pd.read_csv(manifest)
    frame = frame[frame["split"] != "train"]
    p = tmp_path / "no_train.csv"
    frame["image"] = [str(manifest.parent / x) for x in frame["image"]]
    frame.to_csv(p, index=False)
    with pytest.raises(ManifestError, match="no usable training rows"):
        api.fit(_config(p, schema, tmp_path / "r", epochs=1), progress=False)


@pytest.mark.slow
def test_cross_validation_pools_out_of_fold_predictions(
    breast_png: tuple[Path, Path], tmp_path: Path
) -> None:
    cfg = _config(*breast_png, tmp_path / "cv", epochs=3)
    cfg["evaluate"]["report"] = False
    cv = api.cross_validate(cfg, k=3)
    pred = cv.predictions
    manifest = pd.read_csv(breast_png[0])
    # every sample predicted exactly once, by the one fold that held it out
    assert len(pred) == len(manifest) and pred["sample_id"].is_unique
    assert sorted(pred["fold"].unique()) == [0, 1, 2]
    assert (pred.groupby("patient_id")["fold"].nunique() == 1).all()
    assert len(cv.folds) == 3 and len(cv.per_fold["auroc"]["folds"]) == 3
    # the pooled probabilities are the fold checkpoints' own predictions
    prob_col = [c for c in pred.columns if c.startswith("prob_")][-1]
    for f, run in enumerate(cv.folds):
        held = pred[pred["fold"] == f]
        again = api.predict(
            run.checkpoint,
            manifest[manifest["sample_id"].isin(held["sample_id"])],
            root=breast_png[0].parent,
        )
        merged = held.merge(again, on="sample_id", suffixes=("", "_again"))
        assert len(merged) == len(held)
        np.testing.assert_allclose(merged[prob_col], merged[f"{prob_col}_again"], atol=1e-5)
    assert cv.pooled["auroc"] > 0.7  # real ultrasound: clearly above chance
    saved = json.loads((tmp_path / "cv" / "cv_metrics.json").read_text())
    assert saved["k"] == 3 and sum(saved["fold_sizes"]) == len(manifest)
