"""PTB-XL built-in: counts match SOURCES.md, patient-level folds, 12 x 1000 records, checksums,
report masking, and a short ECG + demographics training run that beats chance."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medmodal import api
from medmodal.data.preprocess.base import create_processor
from medmodal.data.schema import Schema
from medmodal.datasets import DATASETS, get_dataset
from medmodal.datasets.ptbxl import SUPERCLASSES, load_checksums
from medmodal.errors import DatasetError

# SOURCES.md, "Counts (kept subset)": records per strat_fold and superclass counts per fold.
FOLDS = {
    1: (212, 104, 39, 60, 48, 26),
    2: (178, 107, 33, 38, 35, 18),
    3: (177, 91, 33, 46, 36, 20),
    4: (193, 112, 38, 43, 39, 11),
    5: (207, 103, 40, 44, 43, 26),
    6: (156, 75, 28, 43, 36, 22),
    7: (196, 109, 32, 34, 49, 22),
    8: (171, 100, 23, 37, 35, 14),
    9: (242, 111, 55, 69, 48, 30),
    10: (255, 139, 49, 53, 41, 26),
}
TOTALS = {"NORM": 1051, "MI": 370, "STTC": 467, "CD": 410, "HYP": 215}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, data_dir: Path):
    return get_dataset("ptbxl").prepare(tmp_path_factory.mktemp("ptbxl"), data_dir)


@pytest.fixture(scope="module")
def kept_all(tmp_path_factory: pytest.TempPathFactory, data_dir: Path):
    return get_dataset("ptbxl").prepare(
        tmp_path_factory.mktemp("ptbxl_keep"), data_dir, no_diagnostic="keep"
    )


def test_registered_with_real_pairing() -> None:
    info = DATASETS.create("ptbxl").info
    assert info.task == "multilabel" and set(info.modalities) == {"ecg", "report", "demo"}
    assert info.pairing.startswith("real patient pairing")
    assert "cardiologist" in info.modalities["report"]


def test_counts_match_sources(prepared, kept_all, data_dir: Path) -> None:
    f = prepared.facts
    if not f["metadata_verified_by"].startswith("package"):  # a folder with other records
        db = pd.read_csv(data_dir / "ptbxl" / "ptbxl_database.csv")
        assert f["records"] == len(db) == kept_all.facts["rows"]
        assert f["rows"] == len(db) - len(f["no_diagnostic_statement"])
        return
    assert f["records"] == 1987
    assert f["superclass_counts_all_records"] == TOTALS
    assert len(f["no_diagnostic_statement"]) == 22
    assert f["reports_without_words"] == [
        "ptbxl_00443"
    ]  # a single space: the report is absent there
    # default: the 22 records without a diagnostic statement are excluded, and listed
    assert f["rows"] == 1965 and f["excluded"] == f["no_diagnostic_statement"]
    excluded = pd.read_csv(prepared.manifest.parent / "excluded.csv")
    assert list(excluded["sample_id"]) == f["excluded"]
    frame = pd.read_csv(prepared.manifest)
    assert len(frame) == 1965 and not set(frame["sample_id"]) & set(f["excluded"])
    assert (frame[list(SUPERCLASSES)].sum(axis=1) > 0).all()
    # keep: all 1,987 records, the 22 with five zero labels
    full = pd.read_csv(kept_all.manifest)
    assert len(full) == 1987 and full["patient_id"].nunique() == 1850
    assert kept_all.facts["excluded"] == []
    zero = full[full[list(SUPERCLASSES)].sum(axis=1) == 0]
    assert sorted(zero["sample_id"]) == sorted(f["no_diagnostic_statement"])
    for fold, (n, *per_class) in FOLDS.items():
        rows = full[full["strat_fold"] == fold]
        assert len(rows) == n, fold
        assert [int(rows[c].sum()) for c in SUPERCLASSES] == per_class, fold


def test_splits_follow_strat_fold_without_patient_overlap(kept_all) -> None:
    frame = pd.read_csv(kept_all.manifest)
    expected = np.where(
        frame["strat_fold"] <= 8, "train", np.where(frame["strat_fold"] == 9, "val", "test")
    )
    assert (frame["split"].to_numpy() == expected).all()
    assert frame.groupby("patient_id")["split"].nunique().max() == 1
    assert frame["patient_id"].duplicated().sum() > 0  # patients with several ECGs exist...
    assert len(frame[frame["split"] == "test"]) == 255  # ...and stay within one split


def test_demographics_capped_and_missing_kept(prepared) -> None:
    frame = pd.read_csv(prepared.manifest)
    assert frame["age"].max() == 90 and prepared.facts["ages_capped"] == 16
    assert frame["height"].isna().any() and frame["weight"].isna().any()  # imputed by the processor
    assert set(frame["sex"]) == {"male", "female"}


def test_record_reads_as_12_by_1000(prepared) -> None:
    schema = Schema.load(prepared.schema)
    row = pd.read_csv(prepared.manifest).iloc[0].to_dict()
    x = create_processor("ecg", schema.modalities["ecg"]).read(row, None)
    assert x.shape == (12, 1000) and np.isfinite(x).all() and x.std() > 0


def test_masked_report_hides_diagnostic_words(tmp_path: Path, data_dir: Path) -> None:
    prep = get_dataset("ptbxl").prepare(tmp_path, data_dir, report_mask=True)
    spec = Schema.load(prep.schema).modalities["report"]
    terms = spec.preprocess["mask_terms"]
    assert {"normales", "infarction", "lvh", "ischaemia"} <= set(
        terms
    ) and "sinusrhythmus" not in terms
    tokens = create_processor("report", spec).read(
        {"report": "Sinusrhythmus normales EKG. Old inferior infarct"}, None
    )
    assert tokens == ("sinusrhythmus", "[MASK]", "ekg", "[MASK]", "[MASK]", "[MASK]")


def _mirror(src: Path, dst: Path, copy: tuple[str, ...] = ()) -> Path:
    """A symlink copy of the ptbxl folder; files in ``copy`` are real copies (to alter)."""
    for p in src.rglob("*"):
        if p.is_file():
            rel = p.relative_to(src)
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            if str(rel) in copy:
                shutil.copyfile(p, dst / rel)
            else:
                os.symlink(p, dst / rel)
    return dst


def test_altered_or_missing_files_raise(tmp_path: Path, data_dir: Path) -> None:
    src = data_dir / "ptbxl"
    dat = "records100/01000/01500_lr.dat"
    root = tmp_path / "data"
    folder = _mirror(src, root / "ptbxl", copy=("ptbxl_database.csv", dat))
    ds = get_dataset("ptbxl")
    # altered CSV (one byte) -> error naming the file and the source
    db = folder / "ptbxl_database.csv"
    db.write_bytes(db.read_bytes().replace(b"sinusrhythmus", b"sinusrhythmuS", 1))
    with pytest.raises(DatasetError, match=r"ptbxl_database\.csv.*altered.*PhysioNet PTB-XL"):
        ds.prepare(tmp_path / "out", root)
    shutil.copyfile(src / "ptbxl_database.csv", db)
    # an altered waveform passes the default check but not verify="all"
    raw = bytearray((folder / dat).read_bytes())
    raw[100] ^= 0xFF
    (folder / dat).write_bytes(bytes(raw))
    assert ds.prepare(tmp_path / "out", root).facts["rows"] == 1965
    with pytest.raises(DatasetError, match=r"01500_lr\.dat.*altered"):
        ds.prepare(tmp_path / "out", root, verify="all")
    # a missing waveform file -> error naming it
    (folder / dat).unlink()
    with pytest.raises(DatasetError, match=r"01500_lr\.dat is missing.*Wagner et al\. 2020"):
        ds.prepare(tmp_path / "out", root)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_another_subset_is_checked_against_the_folder_sums_and_full_metadata(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder with other records (here: ecg_id < 1000, the shared CSV standing in for the whole
    release's metadata) is verified by its SHA256SUMS.txt and row by row; records the package
    has no checksum for are checked against the folder's list."""
    src, root = data_dir / "ptbxl", tmp_path / "data"
    folder = _mirror(src, root / "ptbxl", copy=("ptbxl_database.csv", "SHA256SUMS.txt"))
    lines = (src / "ptbxl_database.csv").read_bytes().splitlines(keepends=True)
    small = [lines[0], *[x for x in lines[1:] if int(x.split(b",", 1)[0]) < 1000]]
    db, full, sums = (
        folder / n for n in ("ptbxl_database.csv", "ptbxl_database_full.csv", "SHA256SUMS.txt")
    )
    shutil.copyfile(src / "ptbxl_database.csv", full)

    def write(rows: list[bytes], list_full: bool = True) -> None:
        db.write_bytes(b"".join(rows))
        keep = [
            x for x in (src / "SHA256SUMS.txt").read_text().splitlines() if not x.endswith(".csv")
        ]
        keep += [f"{_sha(db)}  ptbxl_database.csv"] + (
            [f"{_sha(full)}  ptbxl_database_full.csv"] if list_full else []
        )
        sums.write_text("\n".join(keep) + "\n")

    write(small)
    ds = get_dataset("ptbxl")
    facts = ds.prepare(tmp_path / "out", root).facts
    assert (
        facts["records"] == len(small) - 1 < 1987 and "every row" in facts["metadata_verified_by"]
    )
    # a record the package does not know is verified by the folder's list, else refused
    rec = "records100/00000/00005_lr.dat"
    known = {k: v for k, v in load_checksums().items() if k != rec}
    monkeypatch.setattr("medmodal.datasets.ptbxl.load_checksums", lambda: known)
    assert ds.prepare(tmp_path / "out", root, verify="all").facts["records"] == facts["records"]
    sums.write_text("".join(x + "\n" for x in sums.read_text().splitlines() if rec not in x))
    with pytest.raises(DatasetError, match=r"00005_lr\.dat, which has no checksum"):
        ds.prepare(tmp_path / "out", root)
    # a row changed (and re-listed) is not a row of the full metadata; the full file must be listed
    write([*small[:3], small[3].replace(b",", b",9", 1), *small[4:]])
    with pytest.raises(DatasetError, match=r"1 row\(s\) of .* are not rows of .*ecg_id 3"):
        ds.prepare(tmp_path / "out", root)
    write(small, list_full=False)
    with pytest.raises(DatasetError, match=r"does not list ptbxl_database_full\.csv"):
        ds.prepare(tmp_path / "out", root)


def test_checksums_are_physionet_values() -> None:
    sums = load_checksums()
    assert sums["scp_statements.csv"].startswith("ad05b0b1") and sums[
        "scp_statements.csv"
    ].endswith("ac8f")
    assert sum(k.startswith("records100/") for k in sums) == 2 * 1987


@pytest.mark.slow
def test_short_ecg_plus_demographics_run_beats_chance(prepared, tmp_path: Path) -> None:
    """Train on folds 1-4 (to stay fast), select on fold 9, test on fold 10."""
    frame = pd.read_csv(prepared.manifest)
    manifest = tmp_path / "manifest.csv"
    frame[frame["strat_fold"].isin([1, 2, 3, 4, 9, 10])].to_csv(manifest, index=False)
    schema = Schema.load(prepared.schema)
    config = {
        "name": "ptbxl_short",
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "data": {
            "manifest": str(manifest),
            "schema": schema.model_dump(mode="json", exclude_none=True),
            "modalities": ["ecg", "demo"],
        },
        "model": {
            "encoders": {
                "ecg": {"name": "cnn1d", "channels": [16, 32], "kernel_size": 5},
                "demo": {"name": "mlp", "hidden": [32]},
            },
            "fusion": {"name": "concat"},
        },
        "train": {"epochs": 4, "batch_size": 64, "lr": 3e-3, "threads": 2},
        "evaluate": {"bootstrap": 100, "report": False},
    }
    run = api.fit(config, progress=False)
    test = run.metrics["test"]
    assert run.metrics["n"] == {"train": 757, "val": 232, "test": 252}
    assert set(test["per_class"]) == set(SUPERCLASSES)
    assert test["auroc"] > 0.7, test["auroc"]  # macro over the five superclasses; chance is 0.5
    # demographics alone carry signal (age): the ECG must add to it
    assert test["ablation"]["ecg"]["auroc"] < test["auroc"] - 0.03, test["ablation"]
