"""WDBC x BreastMNIST class pairing: labelled NOT real everywhere, deterministic, leak-free splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

from medmodal.data.readers.npz import load_npz
from medmodal.datasets import DATASETS, get_dataset
from medmodal.datasets.paired import PAIRING

NAME = "wdbc_breastmnist_mechanics"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, data_dir: Path):
    return get_dataset(NAME).prepare(tmp_path_factory.mktemp("paired"), data_dir, seed=0)


def test_labelled_not_real_in_info_manifest_and_files(prepared) -> None:
    info = DATASETS.create(NAME).info
    assert info.pairing == PAIRING and PAIRING.startswith("NOT real patients")
    assert "NOT real" in info.title
    frame = pd.read_csv(prepared.manifest)
    assert (frame["pairing"] == PAIRING).all()
    assert prepared.facts["pairing"] == PAIRING
    assert "NOT real patients" in (prepared.manifest.parent / "PAIRING.txt").read_text()


def test_pairs_share_the_class_and_nothing_is_reused(prepared, data_dir: Path) -> None:
    frame = pd.read_csv(prepared.manifest)
    assert len(frame) == 567 and frame["label"].value_counts().to_dict() == {
        "benign": 357,
        "malignant": 210,
    }
    assert (
        frame["wdbc_row"].is_unique
        and frame["breastmnist_image"].is_unique
        and frame["image"].is_unique
    )
    bunch = load_breast_cancer()
    table_cls = np.array(["malignant", "benign"])[bunch.target[frame["wdbc_row"]]]
    assert (table_cls == frame["label"]).all()
    arrays = load_npz(str(data_dir / "medmnist" / "breastmnist.npz"))
    img_split = frame["breastmnist_image"].str.split("/").str[0]
    img_idx = frame["breastmnist_image"].str.split("/").str[1].astype(int)
    img_cls = [
        ["malignant", "benign"][int(arrays[f"{s}_labels"].reshape(-1)[i])]
        for s, i in zip(img_split, img_idx, strict=True)
    ]
    assert (np.array(img_cls) == frame["label"]).all()
    # features in the manifest are the WDBC row's own values
    np.testing.assert_allclose(frame["mean_radius"], bunch.data[frame["wdbc_row"], 0])


def test_no_row_or_image_in_two_splits_and_official_image_split_kept(prepared) -> None:
    frame = pd.read_csv(prepared.manifest)
    assert frame.groupby("wdbc_row")["split"].nunique().max() == 1
    assert frame.groupby("breastmnist_image")["split"].nunique().max() == 1
    assert (frame["breastmnist_image"].str.split("/").str[0] == frame["split"]).all()
    assert prepared.facts["split_counts"] == {"train": 397, "test": 113, "val": 57}
    assert prepared.facts["unused_images"] == {"benign": 213, "malignant": 0}
    assert prepared.facts["unused_rows"] == {"benign": 0, "malignant": 2}


def test_deterministic_given_seed(prepared, tmp_path: Path, data_dir: Path) -> None:
    a = pd.read_csv(prepared.manifest)
    b = pd.read_csv(get_dataset(NAME).prepare(tmp_path / "same", data_dir, seed=0).manifest)
    c = pd.read_csv(get_dataset(NAME).prepare(tmp_path / "other", data_dir, seed=1).manifest)
    pd.testing.assert_frame_equal(a, b)
    assert not a["wdbc_row"].equals(c["wdbc_row"])
