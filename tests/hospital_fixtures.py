"""Fixtures of the hospital tests: a real Orthanc (Debian packages) on free ports in a temp folder,
a small BreastMNIST checkpoint with temperature and conformal sets, DICOM studies made with
highdicom from real images. With ``CI`` set, a missing Orthanc fails instead of skipping."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import in_ci

from medmodal import api


def need_orthanc() -> None:
    from medmodal.hospital.orthanc import orthanc_missing

    missing = orthanc_missing()
    if missing:
        if in_ci():
            pytest.fail(f"CI is set, so a missing Orthanc fails the run: {missing}", pytrace=False)
        pytest.skip(missing)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real Orthanc with the DICOMweb plugin on 127.0.0.1 (stopped after the module)."""
    from medmodal.hospital.orthanc import start_orthanc

    need_orthanc()
    handle = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def breast_ckpt(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BreastMNIST baseline CNN (first 200 images of each split, 1 epoch) with temperature
    scaling and LAC conformal sets fitted on validation."""
    out = tmp_path_factory.mktemp("hospital_breast")
    cfg = {
        "name": "breast",
        "seed": 0,
        "output_dir": str(out / "breast"),
        "data": {
            "dataset": "breastmnist",
            "data_dir": str(data_dir),
            "dataset_options": {"limit": 200},
        },
        "model": {"encoders": {"image": {"name": "baseline_cnn", "filters": 8, "hidden": 16}}},
        "train": {"epochs": 1, "batch_size": 64, "threads": 1},
        "evaluate": {
            "bootstrap": 0,
            "report": False,
            "calibrate": {"method": "temperature"},
            "conformal": {"method": "lac", "coverage": 0.9},
        },
    }
    return api.fit(cfg, progress=False).checkpoint


@pytest.fixture(scope="module")
def breast_images(data_dir: Path) -> np.ndarray:
    return np.load(data_dir / "medmnist" / "breastmnist.npz")["test_images"][:3]


def cxr_arrays(covid_cxr: Path, n: int = 2) -> list[np.ndarray]:
    """The first ``n`` covid_cxr X-ray PNGs as grey uint8 arrays."""
    from PIL import Image

    files = sorted((covid_cxr / "images").glob("*.png"))[:n]
    return [np.asarray(Image.open(f).convert("L")) for f in files]
