"""Fusion probe (SYNTHETIC data: mechanics, not a clinical result).

On the ``fusion_probe`` set (image + text + audio + tabular, label = sum of four latents > 0, each
modality renders one latent) every registered fusion must beat every single-modality model, removing
any modality at test time must cost AUROC, modality dropout must shrink that cost, and prediction
must work with any subset of modalities. The data are read once; every model is trained through
``medmodal.run.train_and_evaluate`` (fresh processors fitted on the train split, as ``api.fit`` does).
"""

from __future__ import annotations

import itertools
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medmodal import api
from medmodal import run as steps
from medmodal.config import load_config
from medmodal.data.preprocess import create_processor
from medmodal.data.schema import Schema
from medmodal.datasets import get_dataset, prepare_dataset
from medmodal.datasets.base import Prepared
from medmodal.datasets.probe import MODALITIES, probe_config
from medmodal.errors import ConfigError, DatasetError
from medmodal.fusion import FUSIONS

N, SEED, EPOCHS = 1000, 0, 12
MARGIN_OVER_SINGLE = 0.05  # fused AUROC - best single-modality AUROC
MARGIN_REMOVAL = 0.02  # full AUROC - AUROC with one modality removed at test time
DROPOUT = 0.3
DROPOUT_FUSIONS = ("concat", "gated")  # the learned missing token, and a fusion that masks
MARGIN_DROPOUT = 0.005  # mean over DROPOUT_FUSIONS of (loss without dropout - loss with dropout)


pytestmark = pytest.mark.usefixtures("one_thread")  # small models: see conftest


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    return get_dataset("fusion_probe").prepare(tmp_path_factory.mktemp("probe"), n=N, seed=SEED)


def _config(
    probe: Prepared, out: Path, mods: tuple[str, ...], fusion: str, dropout: float = 0.0
) -> Any:
    """The probe recipe (``probe_config``, shared with benchmarks/missing_modality.py)."""
    return load_config(
        probe_config(probe, out, mods, fusion, SEED, dropout=dropout, epochs=EPOCHS, bootstrap=0)
    )


class Runner:
    """Reads the probe once; trains any modality subset / fusion / dropout on the fixed split."""

    def __init__(self, probe: Prepared, work: Path) -> None:
        self.probe, self.work = probe, work
        self.loaded = steps.load_data(
            _config(probe, work / "all", MODALITIES, "concat"), work / "all"
        )
        self.splits = steps.assign_splits(self.loaded)

    def fit(self, mods: tuple[str, ...], fusion: str, dropout: float = 0.0) -> api.RunResult:
        out = self.work / f"{'+'.join(mods)}_{fusion}_p{dropout}"
        cfg = _config(self.probe, out, mods, fusion, dropout)
        subset = self.loaded.select(mods).with_config(cfg)
        return steps.train_and_evaluate(subset, self.splits, out)


@pytest.fixture(scope="module")
def runner(probe: Prepared, tmp_path_factory: pytest.TempPathFactory) -> Runner:
    return Runner(probe, tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def singles(runner: Runner) -> dict[str, float]:
    return {m: runner.fit((m,), "concat").metrics["test"]["auroc"] for m in MODALITIES}


@pytest.fixture(scope="module")
def fused(runner: Runner) -> dict[str, api.RunResult]:
    return {f: runner.fit(MODALITIES, f) for f in FUSIONS.names()}


@pytest.fixture(scope="module")
def fused_dropout(runner: Runner) -> dict[str, api.RunResult]:
    return {f: runner.fit(MODALITIES, f, DROPOUT) for f in DROPOUT_FUSIONS}


def any_one_missing_loss(run: api.RunResult) -> float:
    """Test AUROC minus the AUROC over every test row predicted once without each modality
    (4 x n rows pooled): rows missing different modalities are ranked against each other, so
    the handling of an absent modality (token, masking, calibration) matters. The ablation table
    removes one modality from *all* rows, which shifts every score alike in an additive model."""
    from medmodal.evaluate import compute_metrics

    y = (
        (pd.read_csv(run.run_dir / "predictions_test.csv")["label"] == "positive")
        .to_numpy()
        .astype(int)
    )
    pooled = np.concatenate([run.ablation_probs[m] for m in MODALITIES])
    auroc = compute_metrics(
        np.tile(y, len(MODALITIES)), pooled, "binary", ["negative", "positive"]
    )["auroc"]
    return float(run.metrics["test"]["auroc"] - auroc)


# -- the generator ---------------------------------------------------------------------------
def test_probe_writes_real_files_deterministically(tmp_path: Path) -> None:
    ds = get_dataset("fusion_probe")
    assert "SYNTHETIC" in ds.info.notes and "SYNTHETIC" in ds.info.title
    a = ds.prepare(tmp_path / "a", n=60, seed=3, missing=0.3)
    b = ds.prepare(tmp_path / "b", n=60, seed=3, missing=0.3)
    c = ds.prepare(tmp_path / "c", n=60, seed=4, missing=0.3, text_source="inline")
    fa, fb = pd.read_csv(a.manifest), pd.read_csv(b.manifest)
    pd.testing.assert_frame_equal(fa, fb)
    assert not fa.equals(pd.read_csv(c.manifest))
    schema = Schema.load(a.schema)
    assert set(schema.modalities) == set(MODALITIES) and schema.target.task == "binary"
    assert not {"z_image", "o_image"} & set(
        fa.columns
    )  # the latents are beside the manifest, not in it
    row = fa[fa["image"].notna() & fa["audio"].notna() & fa["note"].notna()].iloc[0]
    for col in ("image", "audio", "note"):
        assert (a.manifest.parent / row[col]).read_bytes() == (
            b.manifest.parent / row[col]
        ).read_bytes()
    with Image.open(a.manifest.parent / row["image"]) as im:
        assert im.format == "PNG" and im.size == (28, 28) and im.mode == "L"
    with wave.open(str(a.manifest.parent / row["audio"])) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (
            4000,
            1,
            2,
            2000,
        )
    note = (a.manifest.parent / row["note"]).read_text()
    assert "noted." in note and len(note.split()) > 10
    inline = pd.read_csv(c.manifest)["note"].dropna()
    assert inline.str.contains("noted.").all()
    # about 30 % of cases lack exactly one modality, as empty cells
    present = np.stack(
        [fa["image"].notna(), fa["note"].notna(), fa["audio"].notna(), fa["marker"].notna()], 1
    )
    assert 8 <= (~present).sum() <= 30 and (present.sum(1) >= 3).all()
    assert fa.loc[fa["marker"].isna(), ["age", "bmi", "site"]].isna().all().all()
    assert sum(a.facts["absent"].values()) == (~present).sum()
    with pytest.raises(ConfigError, match="unknown option 'colour'"):
        prepare_dataset("fusion_probe", tmp_path / "d", None, {"n": 60, "colour": True})
    with pytest.raises(DatasetError, match="missing"):
        ds.prepare(tmp_path / "d", n=60, missing=1.5)


def test_evidence_is_planted_so_no_modality_suffices(probe: Prepared) -> None:
    ref = probe.facts["reference_auroc"]
    assert all(0.6 < ref[m] < 0.78 for m in MODALITIES), ref
    assert ref["all"] > 0.95, ref
    assert all(ref[f"all_but_{m}"] < ref["all"] - 0.04 for m in MODALITIES), ref


# -- fusion vs single modalities -------------------------------------------------------------
@pytest.mark.slow  # the shared fixtures train 12 models on the probe
def test_every_fusion_beats_every_single_modality(
    singles: dict[str, float], fused: dict[str, api.RunResult], probe: Prepared
) -> None:
    best_single = max(singles.values())
    ideal_single = max(probe.facts["reference_auroc"][m] for m in MODALITIES)
    assert set(fused) == set(FUSIONS.names())
    for name, run in fused.items():
        auroc = run.metrics["test"]["auroc"]
        assert auroc >= best_single + MARGIN_OVER_SINGLE, (name, auroc, singles)
        assert auroc >= ideal_single + MARGIN_OVER_SINGLE, (name, auroc, ideal_single)


@pytest.mark.slow  # the shared fixtures train 12 models on the probe
def test_removing_any_modality_lowers_the_fused_auroc(fused: dict[str, api.RunResult]) -> None:
    for name, run in fused.items():
        test = run.metrics["test"]
        assert set(test["ablation"]) == set(MODALITIES)
        for m in MODALITIES:
            assert test["ablation"][m]["auroc"] <= test["auroc"] - MARGIN_REMOVAL, (
                name,
                m,
                test["ablation"],
            )


@pytest.mark.slow  # the shared fixtures train 12 models on the probe
def test_modality_dropout_shrinks_the_missing_modality_loss(
    fused: dict[str, api.RunResult], fused_dropout: dict[str, api.RunResult]
) -> None:
    """Loss in AUROC when any one modality is missing: smaller with dropout for every fusion
    tried, by MARGIN_DROPOUT on average (seeds 0 / 1 / 2 gave mean gains 0.037 / 0.011 / 0.005)."""
    gains = {}
    for name, run in fused_dropout.items():
        with_drop, without = any_one_missing_loss(run), any_one_missing_loss(fused[name])
        gains[name] = without - with_drop
        assert with_drop < without, (name, with_drop, without)
        assert run.metrics["test"]["auroc"] >= fused[name].metrics["test"]["auroc"] - 0.05
    assert np.mean(list(gains.values())) >= MARGIN_DROPOUT, gains


# -- prediction with any subset; processors fitted on train only ------------------------------
@pytest.mark.slow  # the shared fixtures train 12 models on the probe
def test_predict_with_any_subset_of_modalities(
    fused_dropout: dict[str, api.RunResult], probe: Prepared
) -> None:
    run = fused_dropout["concat"]
    schema = Schema.load(probe.schema)
    frame = pd.read_csv(probe.manifest)
    test = frame[frame["split"] == "test"].drop(columns=["label", "split"])
    cols = {m: schema.modalities[m].input_columns() for m in MODALITIES}
    saved = pd.read_csv(run.run_dir / "predictions_test.csv")
    assert run.test_probs is not None
    for k in range(1, len(MODALITIES) + 1):
        for kept in itertools.combinations(MODALITIES, k):
            dropped = [c for m in MODALITIES if m not in kept for c in cols[m]]
            pred = api.predict(
                run.checkpoint, test.drop(columns=dropped), root=probe.manifest.parent
            )
            assert list(pred["sample_id"]) == list(saved["sample_id"])
            p = pred["prob_positive"].to_numpy()
            assert np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all(), kept
            for m in MODALITIES:
                if m not in kept:
                    assert not pred[f"present_{m}"].any()
                else:
                    assert pred[f"present_{m}"].equals(saved[f"present_{m}"])
            if k == len(MODALITIES):
                np.testing.assert_allclose(p, run.test_probs, atol=1e-6)
            elif k == len(MODALITIES) - 1:  # the same as the ablation table's test-time removal
                (gone,) = set(MODALITIES) - set(kept)
                np.testing.assert_allclose(p, run.ablation_probs[gone], atol=1e-6)


@pytest.mark.slow  # the shared fixtures train 12 models on the probe
def test_checkpoint_processors_are_fitted_on_the_train_split_only(
    fused: dict[str, api.RunResult], runner: Runner
) -> None:
    state = torch.load(fused["mean"].checkpoint, weights_only=True)["processors"]
    ds = runner.loaded.dataset
    train = ds.subset(np.flatnonzero(runner.splits == "train"))
    for m in MODALITIES:
        spec = runner.loaded.schema.modalities[m]
        on_train = create_processor(m, spec).fit(train.raws_of(m)).state_dict()
        on_all = create_processor(m, spec).fit(ds.raws_of(m)).state_dict()
        assert _same(state[m], on_train), m
        if m != "text":  # the probe's small vocabulary is the same on train and on all rows
            assert not _same(state[m], on_all), m


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (np.isnan(a) and np.isnan(b))
    return a == b
