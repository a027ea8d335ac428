"""MIT-BIH Arrhythmia beats: AAMI counts, inter-patient split, RR features, segments,
checksums and broken files, and a short training run that beats chance on held-out records."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wfdb

from medmodal import api
from medmodal.data.preprocess.signal import SignalProcessor
from medmodal.data.readers.signal import read_signal
from medmodal.data.schema import Schema
from medmodal.datasets import get_dataset, prepare_dataset
from medmodal.datasets.mitdb import (
    DS1,
    DS2,
    PACED,
    RECORDS,
    RR_COLUMNS,
    RR_NORMALISED,
    VAL_RECORDS,
    load_checksums,
)
from medmodal.errors import ConfigError, DataError, DatasetError


@pytest.fixture(scope="module")
def rec100(mitdb: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Schema]:
    prepared = get_dataset("mitdb").prepare(
        tmp_path_factory.mktemp("m100"), mitdb.parent, records=["100"]
    )
    frame = pd.read_csv(prepared.manifest, dtype={"record": str, "patient_id": str})
    return frame, Schema.load(prepared.schema)


@pytest.fixture(scope="module")
def full(mitdb: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, dict]:
    prepared = get_dataset("mitdb").prepare(tmp_path_factory.mktemp("all"), mitdb.parent)
    frame = pd.read_csv(prepared.manifest, dtype={"record": str, "patient_id": str})
    return frame, prepared.facts


def test_record_100_aami_counts(rec100: tuple[pd.DataFrame, Schema]) -> None:
    frame, schema = rec100
    assert len(frame) == 2273 and frame["sample_id"].is_unique
    assert frame["label"].value_counts().to_dict() == {"N": 2239, "S": 33, "V": 1}
    assert set(frame["symbol"]) == {"N", "A", "V"}
    assert (frame["split"] == "test").all() and (frame["patient_id"] == "100").all()  # DS2
    assert frame["sample_id"].iloc[0] == "100_0001"  # annotation 0 is the rhythm label "+"
    assert schema.target.classes == ["N", "S", "V", "F"]
    assert set(schema.modalities) == {"signal", "rr"}
    assert schema.modalities["rr"].columns == RR_NORMALISED  # ratios only by default


def test_split_lists_are_de_chazals() -> None:
    assert len(DS1) == len(DS2) == 22 and not set(DS1) & set(DS2)
    assert sorted(set(DS1) | set(DS2) | set(PACED)) == sorted(RECORDS) and len(RECORDS) == 48
    assert set(VAL_RECORDS) < set(DS1)


def test_inter_patient_split_no_shared_record_or_patient(full: tuple[pd.DataFrame, dict]) -> None:
    frame, facts = full
    by = {s: g for s, g in frame.groupby("split")}
    assert set(by) == {"train", "val", "test"}
    recs = {s: set(g["record"]) for s, g in by.items()}
    pats = {s: set(g["patient_id"]) for s, g in by.items()}
    for a, b in (("train", "test"), ("val", "test"), ("train", "val")):
        assert not recs[a] & recs[b] and not pats[a] & pats[b]
    assert recs["test"] == set(DS2) and recs["val"] == set(VAL_RECORDS)
    assert recs["train"] == set(DS1) - set(VAL_RECORDS) - {"201"}  # 201 = same subject as 202
    assert not set(frame["record"]) & set(PACED)
    assert set(frame.loc[frame["record"] == "202", "patient_id"]) == {"201+202"}
    assert facts["records_left_out"] == {
        "102": "paced",
        "104": "paced",
        "107": "paced",
        "217": "paced",
        "201": "same subject as 202 (DS2)",
    }
    # de Chazal's DS2 beat counts (N, S, V, F), and the 15 Q beats are counted, not hidden
    assert facts["labels_per_split"]["test"] == {"N": 44259, "S": 1837, "V": 3221, "F": 388}
    assert facts["q_beats_left_out"] == 15 and "Q" not in set(frame["label"])
    assert facts["missing_pre_rr"] == facts["missing_post_rr"] == 43  # one per record, kept
    assert frame["pre_rr"].isna().sum() == 43 and frame["signal"].notna().all()


def test_other_split_modes(mitdb: Path, tmp_path: Path) -> None:
    ds = get_dataset("mitdb")
    recs = ["100", "201", "202", "104"]
    p = ds.prepare(tmp_path / "drop202", mitdb.parent, records=recs, subject_201_202="drop_202")
    f = pd.read_csv(p.manifest, dtype=str)
    assert dict(zip(f["record"], f["split"], strict=True)) == {"100": "test", "201": "train"}
    assert "202" in p.facts["records_left_out"] and "104" in p.facts["records_left_out"]
    p = ds.prepare(
        tmp_path / "random",
        mitdb.parent,
        records=recs,
        split="random",
        exclude_paced=False,
        include_q=True,
    )
    f = pd.read_csv(p.manifest, dtype=str)
    schema = Schema.load(p.schema)
    assert p.facts["leaky"] and schema.patient_column == "sample_id"  # declared, not hidden
    assert set(f["record"]) == set(recs) and "Q" in schema.target.classes
    assert {"train", "val", "test"} == set(f["split"])
    p = ds.prepare(
        tmp_path / "none",
        mitdb.parent,
        records=["100"],
        split="none",
        rr_columns="all",
        demographics=True,
    )
    schema = Schema.load(p.schema)
    assert schema.split_column is None and schema.modalities["rr"].columns == RR_COLUMNS
    assert pd.read_csv(p.manifest)[["age", "sex"]].iloc[0].tolist() == [69, "M"]
    with pytest.raises(DatasetError, match="neither DS1 nor DS2"):
        ds.prepare(tmp_path / "x", mitdb.parent, records=["100"], exclude_paced=False)
    with pytest.raises(DatasetError, match="not MIT-BIH"):
        ds.prepare(tmp_path / "x", mitdb.parent, records=["999"])
    p = prepare_dataset(
        "mitdb", tmp_path / "cli", mitdb.parent, {"records": ["100", "101"], "limit": 5}
    )  # the path `medmodal datasets prepare` and configs take
    assert p.facts["labels_per_split"] == {"test": {"N": 5}, "train": {"N": 5}}
    with pytest.raises(DatasetError, match="does not download"):
        ds.prepare(tmp_path / "x", mitdb.parent, records=["100"], download=True)
    with pytest.raises(ConfigError, match="unknown option 'windw'; allowed: .*window"):
        prepare_dataset(
            "mitdb", tmp_path / "x", mitdb.parent, {"records": ["100"], "windw": [0.2, 0.4]}
        )
    with pytest.raises(ConfigError, match="image_format"):  # an image-set option is refused
        prepare_dataset("mitdb", tmp_path / "x", mitdb.parent, {"image_format": "png"})


def test_rr_features_by_hand(mitdb: Path, rec100: tuple[pd.DataFrame, Schema]) -> None:
    frame, _ = rec100
    ann = wfdb.rdann(str(mitdb / "100"), "atr")
    s = np.asarray(ann.sample)
    beats = [i for i, sym in enumerate(ann.symbol) if sym in "NAV"]  # record 100: N, A, V only
    t = s[beats] / 360.0
    rr = np.diff(t)
    mean_rr = rr.mean()
    rows = frame.set_index("sample_id")
    for j in (0, 1, 7, 500, len(beats) - 1):
        r = rows.loc[f"100_{beats[j]:04d}"]
        pre = t[j] - t[j - 1] if j > 0 else np.nan
        post = t[j + 1] - t[j] if j < len(beats) - 1 else np.nan
        local = np.mean([rr[k] for k in range(j - 5, j + 5) if 0 <= k < len(rr)])
        np.testing.assert_allclose(
            [
                r.pre_rr,
                r.post_rr,
                r.local_rr,
                r.record_rr,
                r.pre_rr_norm,
                r.post_rr_norm,
                r.pre_post_ratio,
                r.local_rr_norm,
                r.pre_local_ratio,
            ],
            [
                pre,
                post,
                local,
                mean_rr,
                pre / mean_rr,
                post / mean_rr,
                pre / post,
                local / mean_rr,
                pre / local,
            ],
            rtol=1e-9,
            equal_nan=True,
        )
        assert r.r_sample == s[beats[j]]
    assert rows.loc["100_0001", "pre_rr"] != rows.loc["100_0001", "pre_rr"]  # first beat: NaN
    v = rows[rows["symbol"] == "V"].iloc[0]
    assert v.pre_rr_norm < 0.8  # the PVC is premature


def test_segment_reads_the_right_window(mitdb: Path, rec100: tuple[pd.DataFrame, Schema]) -> None:
    frame, schema = rec100
    raw = wfdb.rdrecord(str(mitdb / "100")).p_signal[:, 0]  # MLII
    for i in (0, 1000):
        row = frame.iloc[i]
        r = int(row["r_sample"]) - int(row["window_shift"])  # shift only near the record ends
        x, fs, names = read_signal(row["signal"], ["MLII"])
        assert fs == 360 and names == ["MLII"] and x.shape == (1, 252)
        np.testing.assert_allclose(x[0], raw[r - 90 : r + 162], atol=1e-5)
    assert frame.iloc[0]["signal"].endswith("100#0:252") and frame.iloc[0]["window_shift"] == -13
    proc = SignalProcessor("signal", schema.modalities["signal"])
    beat = proc.read(frame.iloc[1000].to_dict(), None)
    assert beat.shape == (1, 126)  # 0.7 s at 180 Hz, band-passed, z-scored
    assert abs(int(np.argmax(np.abs(beat[0]))) - 45) <= 4  # the R peak at 0.25 s


def _copy_record(mitdb: Path, dest: Path, record: str = "100") -> Path:
    folder = dest / "mitdb"
    folder.mkdir(parents=True)
    for ext in ("hea", "dat", "atr"):
        shutil.copy(mitdb / f"{record}.{ext}", folder / f"{record}.{ext}")
    return folder


def test_bad_files_give_clear_errors(mitdb: Path, tmp_path: Path) -> None:
    ds = get_dataset("mitdb")
    folder = _copy_record(mitdb, tmp_path / "data")
    ok = ds.prepare(tmp_path / "ok", tmp_path / "data", records=["100"])
    assert ok.facts["rows"] == 2273
    (folder / "100.atr").unlink()
    with pytest.raises(DatasetError, match=r"100\.atr is missing.*10\.13026/C2F305") as exc:
        ds.prepare(tmp_path / "o", tmp_path / "data", records=["100"])
    assert str(folder / "100.atr") in str(exc.value) and "PhysioNet" in str(exc.value)
    shutil.copy(mitdb / "100.atr", folder / "100.atr")
    data = (mitdb / "100.dat").read_bytes()
    (folder / "100.dat").write_bytes(data[: len(data) // 2])
    for verify in (True, False):  # truncation is caught even without checksums
        with pytest.raises(DatasetError, match=r"100\.dat is truncated: 975000 bytes.*1950000"):
            ds.prepare(tmp_path / "o", tmp_path / "data", records=["100"], verify=verify)
    altered = bytearray(data)
    altered[123456] ^= 0xFF
    (folder / "100.dat").write_bytes(bytes(altered))
    with pytest.raises(DatasetError, match=r"100\.dat is altered.*sha256") as exc:
        ds.prepare(tmp_path / "o", tmp_path / "data", records=["100"])
    assert load_checksums()["100.dat"] in str(exc.value)
    (folder / "100.atr").write_bytes(b"\x00\x01garbage" * 3)
    (folder / "100.dat").write_bytes(data)
    with pytest.raises(DatasetError, match=r"100\.atr"):
        ds.prepare(tmp_path / "o", tmp_path / "data", records=["100"], verify=False)
    with pytest.raises(DatasetError, match="no MIT-BIH records"):
        ds.prepare(tmp_path / "o", tmp_path / "empty", records=["100"])


def test_packaged_checksums_cover_every_record() -> None:
    sums = load_checksums()
    assert len(sums) == 146
    assert all(f"{r}.{e}" in sums for r in RECORDS for e in ("hea", "dat", "atr"))
    assert sums["100.dat"].startswith("b2ea3c25") and sums["100.atr"].startswith("8d8a5349")


@pytest.mark.slow
def test_short_training_beats_chance_on_held_out_records(mitdb: Path, tmp_path: Path) -> None:
    """Train on 3 DS1 records, select on 1 other DS1 record, test on 3 unseen DS2 records."""
    prepared = get_dataset("mitdb").prepare(
        tmp_path / "data",
        mitdb.parent,
        records=["106", "119", "209", "220", "100", "228", "232"],
        val_records=["220"],
    )
    cfg = {
        "name": "mitdb_smoke",
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "data": {"manifest": str(prepared.manifest), "schema": str(prepared.schema)},
        "model": {
            "encoders": {
                "signal": {"name": "cnn1d", "channels": [8, 16]},
                "rr": {"name": "mlp", "hidden": [32]},
            },
            "fusion": {"name": "concat"},
        },
        "train": {
            "epochs": 3,
            "batch_size": 256,
            "lr": 0.003,
            "class_weights": "balanced",
            "monitor": "loss",
            "threads": 1,
        },
        "evaluate": {"bootstrap": 0, "report": False, "ablation": False},
    }
    run = api.fit(cfg, progress=False)
    test = run.metrics["test"]
    assert run.metrics["n"] == {
        "train": 2027 + 1987 + 3005,
        "val": 2048,
        "test": 2273 + 2053 + 1780,
    }
    recall = {k: test["per_class"][k]["recall"] for k in ("N", "S", "V")}
    assert test["balanced_accuracy"] > 0.7, recall  # chance: 1/3 over the classes present
    assert recall["V"] > 0.8 and recall["S"] > 0.4 and recall["N"] > 0.8, recall


def test_running_reference_rr_is_causal_and_matches_by_hand() -> None:
    """rr_reference="running": each beat's reference is the mean of the RR intervals ending in
    the last ``window`` seconds; beats after a change of rhythm see only the past."""
    from medmodal.datasets.mitdb import rr_features, running_mean_rr

    t = np.concatenate([np.arange(0, 10, 1.0), 9 + np.arange(1, 11) * 0.5])  # 1 s, then 0.5 s
    ref = running_mean_rr(t, window=3.0)
    assert ref[0] == ref[1] == ref[9] == 1.0  # the first beat takes the first interval
    i = 12  # t = 10.5: intervals ending in (7.5, 10.5] end at 8, 9, 9.5, 10, 10.5
    assert ref[i] == pytest.approx(np.mean([1.0, 1.0, 0.5, 0.5, 0.5]))
    cut = running_mean_rr(t[: i + 1], window=3.0)
    assert np.allclose(cut, ref[: i + 1], equal_nan=True)  # future beats change nothing
    feats = rr_features(t, reference="running", window=3.0)
    assert feats["pre_rr_norm"][i] == pytest.approx(0.5 / ref[i])
    assert feats["record_rr"][i] == pytest.approx(ref[i])
    assert rr_features(t)["record_rr"][i] == pytest.approx(np.diff(t).mean())


def test_templates_give_each_beat_its_records_median_beat(mitdb: Path, tmp_path: Path) -> None:
    """templates=True: per record the median of every beat window (labels unused) on the beats'
    scale, stacked by the processor as a second channel; a PVC is far from it, a normal beat
    close."""
    from medmodal.data.preprocess import create_processor

    prep = get_dataset("mitdb").prepare(
        tmp_path, mitdb, records=["100"], split="none", standardize="source", templates=True
    )
    frame = pd.read_csv(prep.manifest)
    schema = Schema.load(prep.schema)
    assert schema.modalities["signal"].preprocess["reference_column"] == "template"
    assert frame["template"].nunique() == 1 and Path(frame["template"][0]).is_file()
    proc = create_processor("signal", schema.modalities["signal"])
    x = {k: np.stack([proc.read(r, None) for r in g.to_dict("records")])
         for k, g in frame.groupby("label")}  # fmt: skip
    assert x["N"].shape[1:] == (2, 126)
    assert np.allclose(x["N"][:, 1], x["N"][0, 1])  # one template for the record
    gap = {k: float(np.abs(v[:, 0] - v[:, 1]).mean()) for k, v in x.items()}
    assert gap["V"] > 3 * gap["N"], gap
    row = frame.iloc[0].to_dict()
    row["template"] = None
    with pytest.raises(DataError, match="reference"):
        proc.read(row, None)
