"""covid_cxr built-in dataset on the real files: counts, duplicate people, placeholders, folds,
file verification, bad input in a copied manifest, note masking and a short multimodal run."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medmodal import api
from medmodal.config import load_config
from medmodal.data.preprocess import create_processor
from medmodal.data.schema import Schema
from medmodal.data.splits import patient_kfold
from medmodal.datasets import get_dataset, prepare_dataset
from medmodal.datasets.covid_cxr import (
    PLACEHOLDERS,
    SAME_FILMS,
    CovidCXR,
    image_digests,
    mask_terms,
    merged_patients,
    read_metadata,
)
from medmodal.errors import ConfigError, DataError, DatasetError
from medmodal.run import LoadedData, load_data

SOURCE_HINT = "ieee8023/covid-chestxray-dataset"
# SOURCES.md: the same people under two ids (Eurorad cases 10483 and 10665), one file name each.
DUPLICATES = {"285": "339", "287": "340"}
DUP_FILES = ["000001-24", "000006-17", "000007-15", "000001-27", "000002-29"]
# Two file names with identical bytes (SIRM cases 54 and 72), and the same films re-encoded or
# recropped upstream (SAME_FILMS, found by `medmodal audit`'s perceptual hash).
SAME_BYTES = {"78": "201"}
SAME_FILM_IDS = {"97": "178", "137": "202", "192": "196"}


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])


@pytest.fixture(scope="module")
def folder(data_dir: Path) -> Path:
    f = data_dir / "covid_cxr"
    if not (f / "metadata.csv").is_file():
        pytest.skip("covid_cxr data not in the data directory")
    return f


@pytest.fixture(scope="module")
def meta(folder: Path) -> pd.DataFrame:
    """metadata.csv as pandas reads it, untouched (the reference for the counts)."""
    return _read(folder / "metadata.csv")


@pytest.fixture(scope="module")
def prepared(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("covid")
    ds = get_dataset("covid_cxr")
    return {t: ds.prepare(out / t, folder.parent, target=t) for t in ("finding", "survival")}


def _sha256(folder: Path, names: pd.Series) -> pd.Series:
    return names.map(lambda n: hashlib.sha256((folder / "images" / n).read_bytes()).hexdigest())


def _reference_patients(meta: pd.DataFrame, folder: Path) -> pd.Series:
    """Patient ids merged when they share an image (same sha256, or a SAME_FILMS pair), computed
    directly with pandas and hashlib: relabel every id by the smallest id it is linked to until
    nothing changes."""

    def key(p: str) -> tuple[int, int, str]:
        return (0, int(p), p) if p.isdigit() else (1, 0, p)  # a few ids are "311a", "350b"

    digest = _sha256(folder, meta["png"])
    film_of = dict(zip(meta["png"], meta["patientid"], strict=True))
    edges = [tuple(ids) for ids in meta.groupby(digest)["patientid"].agg(set) if len(ids) > 1]
    edges += [(film_of[a], film_of[b]) for a, b in SAME_FILMS]
    label = {p: p for p in meta["patientid"]}
    changed = True
    while changed:
        changed = False
        for ids in edges:
            low = min((label[p] for p in ids), key=key)
            for p in ids:
                if label[p] != low:
                    label[p], changed = low, True
    return meta["patientid"].map(label)


def test_row_and_patient_counts_match_pandas(
    meta: pd.DataFrame, prepared: dict, folder: Path
) -> None:
    pid = _reference_patients(meta, folder)
    finding = meta["finding"].str.strip()
    keep_f = finding != "todo"
    covid = finding.isin(["COVID-19", "COVID-19, ARDS"])
    keep_s = meta["survival"].isin(["Y", "N"])
    expected = {
        "finding": (
            keep_f,
            {"COVID-19": int((covid & keep_f).sum()), "other": int((~covid & keep_f).sum())},
        ),
        "survival": (
            keep_s,
            {
                "died": int((meta["survival"] == "N").sum()),
                "survived": int((meta["survival"] == "Y").sum()),
            },
        ),
    }
    assert expected["finding"][1] == {
        "COVID-19": 424,
        "other": 119,
    }  # SOURCES.md: 412 + 12 COVID rows
    assert expected["survival"][1] == {"died": 49, "survived": 184}
    for target, (keep, per_class) in expected.items():
        p = prepared[target]
        m = _read(p.manifest)
        assert len(m) == int(keep.sum()) == p.facts["rows"]
        assert m["patient_id"].nunique() == pid[keep].nunique() == p.facts["patients"]
        assert m["label"].value_counts().to_dict() == per_class == p.facts["per_class"]
        # Row by row: the label and the image come from the same metadata row.
        src = meta.loc[m["source_row"].astype(int)]
        assert (src["png"].to_numpy() == m["image"].map(lambda s: Path(s).name).to_numpy()).all()
        assert m["sample_id"].is_unique
        assert (
            p.facts["notes_absent"]
            == int(src["clinical_notes"].isna().sum())
            == int(m["note"].isna().sum())
        )
    assert (
        prepared["finding"].facts["patients"] == 294
        and prepared["survival"].facts["patients"] == 98
    )


def test_duplicate_people_share_one_patient_id(
    meta: pd.DataFrame, prepared: dict, folder: Path
) -> None:
    clean = read_metadata(folder / "metadata.csv")
    merged = merged_patients(clean, image_digests(folder / "images"))
    assert meta["patientid"].nunique() == 338 and merged.nunique() == 332
    by_name_only = merged_patients(clean)  # without digests: shared file names and SAME_FILMS
    assert by_name_only.nunique() == 333
    for a, b in {**DUPLICATES, **SAME_BYTES, **SAME_FILM_IDS}.items():
        assert set(merged[meta["patientid"].isin([a, b])]) == {f"{a}+{b}"}
    assert set(by_name_only[meta["patientid"].isin(list(SAME_BYTES.items())[0])]) == {"78", "201"}
    m = _read(prepared["finding"].manifest)
    dup = m[m["image"].map(lambda s: Path(s).stem).isin(DUP_FILES)]
    assert len(dup) == 10  # 5 files, each in two rows
    assert dup.groupby(dup["image"])["patient_id"].nunique().eq(1).all()
    assert set(dup["source_patientid"]) == {"285", "287", "339", "340"}
    assert prepared["finding"].facts["merged_patients"] == [
        "78+201",
        "97+178",
        "137+202",
        "192+196",
        "285+339",
        "287+340",
    ]
    assert prepared["survival"].facts["merged_patients"] == ["97+178", "285+339", "287+340"]
    # Every byte-identical image (sha256 with hashlib) stays within one patient id.
    for target in ("finding", "survival"):
        m = _read(prepared[target].manifest)
        digest = m["image"].map(lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest())
        shared = m[digest.duplicated(keep=False)]
        assert len(shared) == {"finding": 12, "survival": 10}[target]
        assert shared.groupby(digest[shared.index])["patient_id"].nunique().eq(1).all()


def test_todo_rows_excluded(meta: pd.DataFrame, prepared: dict) -> None:
    m = _read(prepared["finding"].manifest)
    assert "todo" not in set(m["finding"])
    assert (
        prepared["finding"].facts["excluded"]["todo"]
        == int((meta["finding"] == "todo").sum())
        == 78
    )
    todo_rows = set(meta.index[meta["finding"] == "todo"])
    assert not todo_rows & set(m["source_row"].astype(int))


def test_placeholders_become_missing(meta: pd.DataFrame, folder: Path, prepared: dict) -> None:
    raw_hits = meta.isin(PLACEHOLDERS).sum().sum()
    assert raw_hits > 0 and (meta["intubated"] == "Not visible").sum() == 20
    clean = read_metadata(folder / "metadata.csv")
    assert clean.isin(PLACEHOLDERS).sum().sum() == 0
    row = clean[clean["patientid"] == "378"].iloc[0].to_dict()  # "?" in every clinical field
    assert pd.isna(row["offset"]) and pd.isna(row["view"]) and pd.isna(row["survival"])
    schema = Schema.load(prepared["finding"].schema)
    record = create_processor("record", schema.modalities["record"])
    raw = meta[meta["patientid"] == "378"].iloc[0].to_dict()  # the untouched "?" cells
    parsed = record.read(raw, None)
    numeric = dict(zip(record.numeric_columns, parsed["numeric"], strict=True))
    assert numeric["age"] == 45 and all(np.isnan(v) for k, v in numeric.items() if k != "age")
    assert dict(zip(record.categorical_columns, parsed["categorical"], strict=True)) == {
        "sex": "F",
        "view": None,
    }
    m = _read(prepared["survival"].manifest)
    assert not m[["offset", "view", "temperature"]].isin(PLACEHOLDERS).any().any()


@pytest.mark.parametrize("target", ["finding", "survival"])
def test_patient_folds_share_no_patient(prepared: dict, target: str) -> None:
    m = _read(prepared[target].manifest)
    labels = (m["label"] == m["label"].iloc[0]).astype(int).to_numpy()
    folds = patient_kfold(m["patient_id"].tolist(), labels, n_splits=5, seed=0)
    assert set(folds) == set(range(5))
    assert m.assign(fold=folds).groupby("patient_id")["fold"].nunique().max() == 1
    for f in range(5):
        assert len(set(labels[folds == f])) == 2
    # The same film never lands in two folds: byte-identical images, and the SAME_FILMS pairs.
    digest = m["image"].map(lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest())
    assert m.assign(fold=folds).groupby(digest)["fold"].nunique().max() == 1
    fold_of = dict(zip(m["image"].map(lambda p: Path(p).name), folds, strict=True))
    for a, b in SAME_FILMS:
        if a in fold_of and b in fold_of:
            assert fold_of[a] == fold_of[b], (a, b)


def _copy_folder(folder: Path, dest: Path, *, skip: str | None = None) -> Path:
    """A data folder with the real metadata.csv and symlinked images (optionally one left out)."""
    (dest / "images").mkdir(parents=True)
    shutil.copy(folder / "metadata.csv", dest / "metadata.csv")
    for p in (folder / "images").iterdir():
        if p.name != skip:
            (dest / "images" / p.name).symlink_to(p)
    return dest


def test_altered_or_missing_files_name_the_file_and_source(folder: Path, tmp_path: Path) -> None:
    ds = CovidCXR()
    meta_copy = _copy_folder(folder, tmp_path / "a" / "covid_cxr")
    with open(meta_copy / "metadata.csv", "a") as fh:
        fh.write("\n")
    with pytest.raises(DatasetError, match=r"metadata\.csv.*altered") as err:
        ds.prepare(tmp_path / "out", tmp_path / "a")
    assert SOURCE_HINT in str(err.value)

    name = "000001-24.png"
    _copy_folder(folder, tmp_path / "b" / "covid_cxr", skip=name)
    with pytest.raises(DatasetError, match=name) as err:
        ds.prepare(tmp_path / "out", tmp_path / "b")
    assert (
        "missing" in str(err.value)
        and SOURCE_HINT in str(err.value)
        and "license" in str(err.value)
    )

    bad = _copy_folder(folder, tmp_path / "c" / "covid_cxr", skip=name)
    (bad / "images" / name).write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(DatasetError, match=f"{name}.*does not decode") as err:
        ds.prepare(tmp_path / "out", tmp_path / "c")
    assert SOURCE_HINT in str(err.value)

    with pytest.raises(DatasetError, match="target"):
        ds.prepare(tmp_path / "out", folder.parent, target="died")
    with pytest.raises(ConfigError, match="mask_note") as cfg_err:  # a misspelled option
        prepare_dataset("covid_cxr", tmp_path / "out", folder.parent, {"mask_note": True})
    assert "mask_notes" in str(cfg_err.value)  # the allowed options are listed
    with pytest.raises(DatasetError, match="no download"):
        ds.prepare(tmp_path / "out", folder.parent, download=True)
    # The CLI's generic options (`medmodal datasets prepare covid_cxr --limit 20`) are accepted.
    small = ds.prepare(
        tmp_path / "small", folder.parent, image_format="npz", download=False, limit=20
    )
    assert small.facts["rows"] == len(_read(small.manifest)) == 20


def _bad_manifest(prepared: dict, tmp_path: Path) -> tuple[Path, str, str, str]:
    """The first 30 finding rows copied, one image corrupt and one note emptied."""
    m = _read(prepared["finding"].manifest).head(30).copy()
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    m.loc[0, "image"] = str(corrupt)
    note_row = int(np.flatnonzero(m["note"].notna().to_numpy())[1])
    m.loc[note_row, "note"] = "   "
    path = tmp_path / "manifest.csv"
    m.to_csv(path, index=False)
    return path, m.loc[0, "sample_id"], m.loc[note_row, "sample_id"], str(corrupt)


def _load(manifest: Path, schema: dict, run_dir: Path) -> LoadedData:
    cfg = load_config({"data": {"manifest": str(manifest), "schema": schema}})
    return load_data(cfg, run_dir)


def test_bad_image_and_empty_note_in_a_copied_manifest(prepared: dict, tmp_path: Path) -> None:
    manifest, bad_id, note_id, corrupt = _bad_manifest(prepared, tmp_path)
    kw = {"image_size": 16, "text_tokenizer": "word"}
    strict = CovidCXR.schema_dict("finding", on_bad="error", **kw)
    with pytest.raises(DataError) as err:
        _load(manifest, strict, tmp_path / "r1")
    msg = str(err.value)
    assert bad_id in msg and corrupt in msg and "image" in msg

    lenient = CovidCXR.schema_dict("finding", on_bad="missing", **kw)
    loaded = _load(manifest, lenient, tmp_path / "r2")
    ds = loaded.dataset
    assert len(ds) == 30  # nothing dropped
    counts = ds.missing_counts
    assert counts["image"] == {"absent": 0, "bad": 1}
    original_absent = int(_read(prepared["finding"].manifest).head(30)["note"].isna().sum())
    assert counts["note"] == {"absent": original_absent + 1, "bad": 0}
    present = dict(zip(ds.ids, ds.present_matrix().tolist(), strict=True))
    assert present[bad_id][0] is False and present[note_id][1] is False
    assert "image" in ds.bad_inputs[ds.ids.index(bad_id)]

    no_empty_notes = CovidCXR.schema_dict("finding", on_bad="missing", **kw)
    no_empty_notes["modalities"] = {
        "note": {**no_empty_notes["modalities"]["note"], "allow_missing": False, "on_bad": "error"}
    }
    with pytest.raises(DataError, match="note"):
        _load(manifest, no_empty_notes, tmp_path / "r3")


def test_mask_notes_hides_diagnosis_and_outcome_words(prepared: dict, tmp_path: Path) -> None:
    schema = Schema.load(
        CovidCXR.schema_dict("survival", text_tokenizer="word", mask_notes=True, mask_numbers=True)
    )
    proc = create_processor("note", schema.modalities["note"])
    note = (
        "On March 3, 2020 the 65-year-old patient tested COVID-19 positive (SARS-CoV-2 RT-PCR); "
        "he was intubated in the ICU and died. Streptococcus was excluded."
    )
    tokens = proc.read({"note": note}, None)
    text = " ".join(tokens)
    for word in ("covid", "sars", "pcr", "intubated", "icu", "died", "streptococcus", "2020", "65"):
        assert word not in text, (word, text)
    assert tokens.count("[MASK]") >= 9 and "patient" in tokens and "excluded" in tokens
    assert {"covid-19", "died", "icu", "pneumocystis"} <= {t.lower() for t in mask_terms()}
    raw = Schema.load(prepared["survival"].schema).modalities["note"].preprocess
    assert "mask_terms" not in raw  # raw notes by default


@pytest.mark.slow
def test_short_multimodal_training_beats_chance(folder: Path, tmp_path: Path) -> None:
    cfg = {
        "name": "covid_short",
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "data": {
            "dataset": "covid_cxr",
            "data_dir": str(folder.parent),
            "dataset_options": {"target": "finding", "image_size": 32, "text_tokenizer": "word"},
        },
        "model": {
            "encoders": {
                "image": {"name": "baseline_cnn", "filters": 8, "hidden": 32},
                "note": {"name": "bigru", "embed_dim": 32, "hidden": 32},
                "record": {"name": "mlp"},
            },
            "fusion": {"name": "concat"},
        },
        "train": {
            "epochs": 5,
            "batch_size": 32,
            "lr": 2e-3,
            "class_weights": "balanced",
            "threads": 1,
        },
        "evaluate": {"bootstrap": 200, "report": False},
    }
    run = api.fit(cfg, progress=False)
    test = run.metrics["test"]
    assert sum(run.metrics["n"].values()) == 543
    assert test["auroc"] > 0.7, test["auroc"]
    assert test["ci"]["auroc"]["low"] > 0.5, test["ci"]["auroc"]
    assert run.metrics["missing_modalities"]["test"]["note"]["absent"] > 0
    assert set(test["ablation"]) == {"image", "note", "record"}
