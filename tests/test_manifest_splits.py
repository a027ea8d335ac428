"""Manifest validation, label maps and patient-level splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medmodal.data.manifest import (
    build_label_map,
    check_columns,
    encode_labels,
    read_manifest,
    read_splits,
    sample_ids,
)
from medmodal.data.schema import Schema
from medmodal.data.splits import check_no_leakage, patient_kfold, patient_split
from medmodal.errors import BadSampleLog, ConfigError, DataError, ManifestError

SCHEMA = {
    "id_column": "sid",
    "patient_column": "pid",
    "target": {"task": "binary", "column": "y", "classes": ["neg", "pos"]},
    "modalities": {"image": {"type": "image", "column": "path"}},
}


def _write(tmp_path: Path, frame: pd.DataFrame, name: str = "m.csv") -> Path:
    p = tmp_path / name
    frame.to_csv(p, index=False)
    return p


def test_schema_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="modalities"):
        Schema.load({"target": {"column": "y"}})
    with pytest.raises(ConfigError, match="tabular modality needs"):
        Schema.load({**SCHEMA, "modalities": {"t": {"type": "tabular"}}})
    with pytest.raises(ConfigError, match="reserved"):
        Schema.load({**SCHEMA, "modalities": {"label": {"type": "image", "column": "p"}}})
    with pytest.raises(ConfigError, match="survival target needs"):
        Schema.load({**SCHEMA, "target": {"task": "survival"}})


def test_empty_manifest_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "nope.csv")
    p = tmp_path / "empty.csv"
    p.write_text("sid,pid,y,path\n")
    with pytest.raises(ManifestError, match="no rows"):
        read_manifest(p)


def test_wrong_columns_listed(tmp_path: Path) -> None:
    df = read_manifest(
        _write(
            tmp_path,
            pd.DataFrame({"sid": ["a"], "patient": ["p"], "y": ["neg"], "path": ["x.png"]}),
        )
    )
    with pytest.raises(ManifestError, match=r"lacks column\(s\) \['pid'\].*it has"):
        check_columns(df, Schema.load(SCHEMA), "m.csv")


def test_label_not_in_map_names_the_row(tmp_path: Path) -> None:
    df = read_manifest(
        _write(
            tmp_path,
            pd.DataFrame(
                {
                    "sid": ["a", "b", "c"],
                    "pid": ["1", "2", "3"],
                    "y": ["neg", "maybe", "pos"],
                    "path": ["x"] * 3,
                }
            ),
        )
    )
    schema = Schema.load(SCHEMA)
    lm = build_label_map(df, schema, "m.csv")
    ids = sample_ids(df, schema, "m.csv")
    with pytest.raises(DataError, match=r"sample 'b'.*'maybe'.*not in the label map"):
        encode_labels(df, schema, lm, ids, None)
    bad = BadSampleLog()
    y, ok = encode_labels(df, schema, lm, ids, bad)
    assert ok.tolist() == [True, False, True] and y[ok].tolist() == [0, 1]
    assert bad.ids() == {"b"}


def test_numeric_labels_and_duplicates(tmp_path: Path) -> None:
    df = read_manifest(
        _write(
            tmp_path,
            pd.DataFrame({"sid": ["a", "a"], "pid": ["1", "2"], "y": [0, 1], "path": ["x"] * 2}),
        )
    )
    with pytest.raises(ManifestError, match="duplicate sample ids"):
        sample_ids(df, Schema.load(SCHEMA), "m.csv")
    schema = Schema.load({**SCHEMA, "target": {"task": "binary", "column": "y"}})
    lm = build_label_map(df, schema, "m.csv")
    assert lm.classes == ["0", "1"] and lm.encode(1.0) == 1


def test_split_column_validated(tmp_path: Path) -> None:
    schema = Schema.load({**SCHEMA, "split_column": "split"})
    df = read_manifest(
        _write(
            tmp_path,
            pd.DataFrame(
                {
                    "sid": ["a", "b"],
                    "pid": ["1", "2"],
                    "y": ["neg", "pos"],
                    "path": ["x"] * 2,
                    "split": ["train", "holdout"],
                }
            ),
        )
    )
    with pytest.raises(ManifestError, match="train/val/test"):
        read_splits(df, schema, ["a", "b"], "m.csv")


def test_patient_split_has_no_leakage_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    patients = [f"p{int(i)}" for i in rng.integers(0, 120, size=600)]
    labels = np.array([int(p[1:]) % 3 == 0 for p in patients], dtype=int)  # a third positive
    a = patient_split(patients, labels, 0.1, 0.2, seed=3)
    b = patient_split(patients, labels, 0.1, 0.2, seed=3)
    c = patient_split(patients, labels, 0.1, 0.2, seed=4)
    assert (a == b).all() and not (a == c).all()
    check_no_leakage(patients, a)
    by_patient = pd.DataFrame({"p": patients, "s": a}).groupby("p")["s"].nunique()
    assert (by_patient == 1).all()
    n_pat = pd.Series(patients).nunique()
    test_pat = pd.Series(patients)[a == "test"].nunique()
    assert abs(test_pat / n_pat - 0.2) < 0.05
    # stratified by patient: every split keeps the patients' class mix (unstratified seeds 0-9
    # miss it by up to 0.16; stratified by 0.006)
    per_patient = pd.DataFrame({"p": patients, "y": labels, "s": a}).drop_duplicates("p")
    share = per_patient.groupby("s")["y"].mean()
    assert (share - per_patient["y"].mean()).abs().max() < 0.02, share.to_dict()


def test_leaky_split_column_is_refused() -> None:
    with pytest.raises(ManifestError, match="patient leakage.*p1"):
        check_no_leakage(["p1", "p1", "p2"], ["train", "test", "train"])


def test_kfold_groups_patients_and_stratifies() -> None:
    patients = [f"p{i // 3}" for i in range(300)]  # 100 patients with 3 rows each
    labels = np.array([int((i // 3) % 5 == 0) for i in range(300)])  # 20% positive
    folds = patient_kfold(patients, labels, n_splits=5, seed=0)
    frame = pd.DataFrame({"p": patients, "f": folds, "y": labels})
    assert (frame.groupby("p").size() == 3).all()
    assert (frame.groupby("p")["f"].nunique() == 1).all()
    assert sorted(set(folds)) == [0, 1, 2, 3, 4]
    share = frame.groupby("f")["y"].mean()
    assert (share - 0.2).abs().max() < 0.03, share.to_dict()  # each fold keeps the 20%


def test_split_too_small_to_stratify_falls_back() -> None:
    # 12 patients, 5 classes: a 10% validation part (2 patients) cannot hold every class.
    patients = [f"p{i}" for i in range(12)]
    labels = np.array([i % 5 for i in range(12)])
    split = patient_split(patients, labels, val_fraction=0.1, test_fraction=0.0, seed=0)
    assert (split == "val").sum() >= 1 and (split == "train").sum() >= 9
