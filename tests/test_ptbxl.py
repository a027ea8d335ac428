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

# SOURCES.md, "Counts": for each folder the data set has been published as, records per
# strat_fold with the superclass counts of each fold, and the facts of the whole folder.
COUNTS: dict[int, dict] = {
    1987: {
        "folds": {
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
        },
        "totals": {"NORM": 1051, "MI": 370, "STTC": 467, "CD": 410, "HYP": 215},
        "patients": 1850,
        "no_diagnostic": 22,
        "ages_capped": 16,
    },
    8976: {
        "folds": {
            1: (854, 424, 173, 203, 188, 92),
            2: (850, 412, 177, 197, 190, 113),
            3: (884, 427, 191, 207, 189, 99),
            4: (906, 424, 194, 212, 200, 95),
            5: (901, 417, 217, 227, 199, 101),
            6: (870, 421, 187, 223, 183, 108),
            7: (861, 442, 175, 179, 184, 98),
            8: (818, 397, 180, 181, 168, 94),
            9: (1006, 450, 250, 238, 233, 133),
            10: (1026, 476, 234, 244, 205, 137),
        },
        "totals": {"NORM": 4290, "MI": 1978, "STTC": 2111, "CD": 1939, "HYP": 1070},
        "patients": 8042,
        "no_diagnostic": 120,
        "ages_capped": 90,
    },
}


def published(facts: dict) -> dict:
    """The SOURCES.md counts of the folder ``facts`` describe (a folder of another size fails:
    its counts must be added above from its SOURCES.md)."""
    assert facts["records"] in COUNTS, f"no published counts for {facts['records']} records"
    return COUNTS[facts["records"]]


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


def test_counts_match_sources(prepared, kept_all) -> None:
    f = prepared.facts
    want = published(f)
    assert f["superclass_counts_all_records"] == want["totals"]
    assert len(f["no_diagnostic_statement"]) == want["no_diagnostic"]
    assert f["reports_without_words"] == ["ptbxl_00443"]  # a single space: the report is absent
    # default: the records without a diagnostic statement are excluded, and listed
    rows = f["records"] - want["no_diagnostic"]
    assert f["rows"] == rows and f["excluded"] == f["no_diagnostic_statement"]
    excluded = pd.read_csv(prepared.manifest.parent / "excluded.csv")
    assert list(excluded["sample_id"]) == f["excluded"]
    frame = pd.read_csv(prepared.manifest)
    assert len(frame) == rows and not set(frame["sample_id"]) & set(f["excluded"])
    assert (frame[list(SUPERCLASSES)].sum(axis=1) > 0).all()
    # keep: every record, those without a diagnostic statement with five zero labels
    full = pd.read_csv(kept_all.manifest)
    assert len(full) == f["records"] and full["patient_id"].nunique() == want["patients"]
    assert kept_all.facts["excluded"] == []
    zero = full[full[list(SUPERCLASSES)].sum(axis=1) == 0]
    assert sorted(zero["sample_id"]) == sorted(f["no_diagnostic_statement"])
    for fold, (n, *per_class) in want["folds"].items():
        rows_of_fold = full[full["strat_fold"] == fold]
        assert len(rows_of_fold) == n, fold
        assert [int(rows_of_fold[c].sum()) for c in SUPERCLASSES] == per_class, fold


def test_splits_follow_strat_fold_without_patient_overlap(kept_all) -> None:
    frame = pd.read_csv(kept_all.manifest)
    expected = np.where(
        frame["strat_fold"] <= 8, "train", np.where(frame["strat_fold"] == 9, "val", "test")
    )
    assert (frame["split"].to_numpy() == expected).all()
    assert frame.groupby("patient_id")["split"].nunique().max() == 1
    assert frame["patient_id"].duplicated().sum() > 0  # patients with several ECGs exist...
    test_rows = published(kept_all.facts)["folds"][10][0]
    assert len(frame[frame["split"] == "test"]) == test_rows  # ...and stay within one split


def test_demographics_capped_and_missing_kept(prepared) -> None:
    frame = pd.read_csv(prepared.manifest)
    assert frame["age"].max() == 90
    assert prepared.facts["ages_capped"] == published(prepared.facts)["ages_capped"]
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
    """A symlink copy of the ptbxl folder; files in ``copy`` are real copies (to alter). Write
    only into those copies or into new files: writing to a link writes into the real data."""
    for p in src.rglob("*"):
        if p.is_file():
            rel = p.relative_to(src)
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            if str(rel) in copy:
                shutil.copyfile(p, dst / rel)
            else:
                os.symlink(p, dst / rel)
    return dst


def _flip_byte(path: Path, at: int = 100) -> None:
    """Change one byte of ``path`` in place (a real copy: never a link into the data)."""
    assert not path.is_symlink(), path
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.slow  # copies and alters the folder's files (~4 s)
def test_altered_or_missing_files_raise(prepared, tmp_path: Path, data_dir: Path) -> None:
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
    _flip_byte(folder / dat)
    assert ds.prepare(tmp_path / "out", root).facts["rows"] == prepared.facts["rows"]
    with pytest.raises(DatasetError, match=r"01500_lr\.dat.*altered"):
        ds.prepare(tmp_path / "out", root, verify="all")
    # a missing waveform file -> error naming it
    (folder / dat).unlink()
    with pytest.raises(DatasetError, match=r"01500_lr\.dat is missing.*Wagner et al\. 2020"):
        ds.prepare(tmp_path / "out", root)


FLAC = "records100/02000/02000_lr"  # WFDB format 516: two signal files named in the header


def test_flac_records_are_checked_by_the_files_their_header_names(
    tmp_path: Path, data_dir: Path
) -> None:
    src = data_dir / "ptbxl"
    if not (src / f"{FLAC}_2.dat").is_file():
        pytest.skip("this ptbxl folder holds no FLAC (format 516) records")
    second = f"{FLAC}_2.dat"
    root = tmp_path / "data"
    folder = _mirror(src, root / "ptbxl", copy=(second, f"{FLAC}.hea"))
    ds = get_dataset("ptbxl")
    # the second signal file (leads V3-V6) is checked like the first
    _flip_byte(folder / second)
    with pytest.raises(DatasetError, match=r"02000_lr_2\.dat is altered"):
        ds.prepare(tmp_path / "out", root, verify="all")
    (folder / second).unlink()
    with pytest.raises(DatasetError, match=r"02000_lr_2\.dat is missing"):
        ds.prepare(tmp_path / "out", root)
    shutil.copyfile(src / second, folder / second)
    # a header naming a file the folder's list does not hold is refused, naming that file
    hea = folder / f"{FLAC}.hea"
    hea.write_text(hea.read_text().replace("02000_lr_2.dat", "02000_lr_9.dat"))
    with pytest.raises(DatasetError, match=r"02000_lr_9\.dat, which has no checksum"):
        ds.prepare(tmp_path / "out", root)
    hea.write_text("02000_lr\n")  # no signal count: a readable message naming the header
    with pytest.raises(DatasetError, match=r"02000_lr\.hea.*no record line"):
        ds.prepare(tmp_path / "out", root)


def test_flac_record_decodes_to_physionets_samples(prepared, data_dir: Path) -> None:
    """A record stored as FLAC reads, through medmodal's reader, to the exact samples of
    PhysioNet's format-16 file, whose SHA-256 the folder keeps (SOURCES.md)."""
    originals = data_dir / "ptbxl" / "SHA256SUMS_format16_originals.txt"
    if not originals.is_file():
        pytest.skip("this ptbxl folder holds no FLAC (format 516) records")
    sums = dict(reversed(x.split()) for x in originals.read_text().splitlines() if x.strip())
    schema = Schema.load(prepared.schema)
    frame = pd.read_csv(prepared.manifest).set_index("sample_id")
    proc = create_processor("ecg", schema.modalities["ecg"])
    for ecg_id in (2000, 4321, 6999):
        x = proc.read(frame.loc[f"ptbxl_{ecg_id:05d}"].to_dict(), None)
        digital = np.round(np.asarray(x, dtype=np.float64) * 1000).astype("<i2")  # gain 1000/mV
        name = f"records100/{ecg_id // 1000 * 1000:05d}/{ecg_id:05d}_lr.dat"
        assert hashlib.sha256(digital.T.tobytes()).hexdigest() == sums[name], ecg_id


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_another_subset_is_checked_against_the_folder_sums_and_full_metadata(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder with other records (here: ecg_id < 1000) is verified by its SHA256SUMS.txt and
    row by row against ptbxl_database_full.csv (the folder's own when it has one, which stays a
    link and is only read; else the shared CSV stands in for it as a new file); records the
    package has no checksum for are checked against the folder's list."""
    src, root = data_dir / "ptbxl", tmp_path / "data"
    folder = _mirror(src, root / "ptbxl", copy=("ptbxl_database.csv", "SHA256SUMS.txt"))
    lines = (src / "ptbxl_database.csv").read_bytes().splitlines(keepends=True)
    small = [lines[0], *[x for x in lines[1:] if int(x.split(b",", 1)[0]) < 1000]]
    db, full, sums = (
        folder / n for n in ("ptbxl_database.csv", "ptbxl_database_full.csv", "SHA256SUMS.txt")
    )
    if not full.exists():
        shutil.copyfile(src / "ptbxl_database.csv", full)
    assert not db.is_symlink() and not sums.is_symlink()

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
    frame = frame[
        frame["sample_id"] < "ptbxl_02000"
    ]  # the first 1,987 records, whatever the folder
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
