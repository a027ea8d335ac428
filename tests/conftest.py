"""Shared fixtures: the real data directory and its data sets, small synthetic data, helpers.

Real data: ``MEDMODAL_DATA_DIR``, else ``../shared/data``. A test that needs a data set it cannot
find skips with the reason; with the ``CI`` environment variable set it fails instead, so a CI run
without the data cannot pass by skipping (see :func:`pytest_runtest_makereport`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Under CI, a test that uses the real data and skipped (data set not found) fails."""
    report = yield
    skipped = call.excinfo is not None and call.excinfo.errisinstance(pytest.skip.Exception)
    uses_data = "data_dir" in getattr(item, "fixturenames", ())
    if skipped and uses_data and in_ci() and not hasattr(report, "wasxfail"):
        reason = str(call.excinfo.value) if call.excinfo is not None else ""
        report.outcome = "failed"
        report.longrepr = f"CI is set, so missing real data fails the run: {reason}"
    return report


def _data_dir() -> Path | None:
    env = os.environ.get("MEDMODAL_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return None


def data_set(data_dir: Path, name: str, probe: str) -> Path:
    """``data_dir / name``, skipping (failing under CI) when ``probe`` is not in it."""
    d = data_dir / name
    if not (d / probe).is_file():
        pytest.skip(f"{name} data set not found in {data_dir} (no {probe})")
    return d


@pytest.fixture(scope="session", autouse=True)
def data_unchanged() -> Iterator[None]:
    """Fails the run when any file of the real data folder changed, vanished or appeared during
    it: SHA-256 of every file before the first test and after the last (both tiers and CI)."""
    from data_integrity import changes, snapshot

    root = _data_dir()
    if root is None:
        yield
        return
    before = snapshot(root)
    yield
    diff = changes(before, snapshot(root))
    if diff:
        shown = "; ".join(diff[:10]) + (f" (+{len(diff) - 10} more)" if len(diff) > 10 else "")
        pytest.fail(f"the test run altered the real data in {root}: {shown}", pytrace=False)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data directory; tests that need it skip with a reason when it is absent."""
    d = _data_dir()
    if d is None:
        pytest.skip("real data directory not found: set MEDMODAL_DATA_DIR (e.g. ../shared/data)")
    return d


@pytest.fixture(scope="session")
def hs(data_dir: Path) -> Path:
    """The heart-sound clips (Yaseen et al. 2018): 1000 WAVs and labels.csv."""
    return data_set(data_dir, "heart_sounds", "labels.csv")


@pytest.fixture(scope="session")
def mitdb(data_dir: Path) -> Path:
    """The MIT-BIH Arrhythmia Database records (WFDB)."""
    return data_set(data_dir, "mitdb", "100.hea")


@pytest.fixture(scope="session")
def covid_cxr(data_dir: Path) -> Path:
    """The COVID-19 chest X-ray collection: metadata.csv and images/."""
    return data_set(data_dir, "covid_cxr", "metadata.csv")


@pytest.fixture(autouse=True)
def _seed() -> None:
    import torch

    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Small models: one thread is faster and unaffected by a busy machine.
    Use per module with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- small data, written where the test asks ----------------------------------------------------
@pytest.fixture(scope="session")
def medmnist_pngs(data_dir: Path) -> Callable[..., list[tuple[str, int]]]:
    """``write(dest, name="breastmnist", n=24)``: the first ``n`` real training images of a
    MedMNIST set as ``dest/img_<i>.png``; returns ``[(file name, label index), ...]``."""
    from PIL import Image

    def write(dest: Path, name: str = "breastmnist", n: int = 24) -> list[tuple[str, int]]:
        arrays = np.load(data_dir / "medmnist" / f"{name}.npz")
        imgs, labels = arrays["train_images"][:n], arrays["train_labels"][:n, 0]
        out = []
        for i in range(n):
            Image.fromarray(imgs[i]).save(dest / f"img_{i}.png")
            out.append((f"img_{i}.png", int(labels[i])))
        return out

    return write


def interrupt_fit(monkeypatch: pytest.MonkeyPatch, fit: Callable[[], Any], at: int = 3) -> None:
    """Run ``fit`` until its ``at``-th validation, where a KeyboardInterrupt stops it (as Ctrl-C
    would); validation is restored afterwards, so the run can be resumed."""
    from medmodal.train.trainer import Trainer

    original, calls = Trainer.validate, {"n": 0}

    def interrupted(self: Trainer, ds: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == at:
            raise KeyboardInterrupt
        return original(self, ds)

    monkeypatch.setattr(Trainer, "validate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit()
    monkeypatch.setattr(Trainer, "validate", original)


def synthetic_table(
    n: int = 240,
    *,
    prevalence: float = 0.5,
    noise: float = 0.5,
    rows_per_patient: tuple[int, ...] = (1,),
    split: tuple[float, float, float] | None = None,
    flip_val: bool = False,
    seed: int = 0,
) -> pd.DataFrame:
    """A SYNTHETIC binary table: ``x1 + noise`` decides the label (``prevalence`` of the rows
    positive), ``x2`` is noise, ``const`` is constant. Patients own ``rows_per_patient`` rows in turn; with ``split`` (train/val/test
    fractions, whole patients), ``flip_val`` inverts the validation labels so every epoch of
    training makes validation worse (the best epoch is the first)."""
    rng = np.random.default_rng(seed)
    sizes = [rows_per_patient[i % len(rows_per_patient)] for i in range(n)]
    patients = np.repeat(np.arange(n), sizes)[:n]
    z = rng.normal(size=n)
    score = z + noise * rng.normal(size=n)
    y = (score > np.quantile(score, 1 - prevalence)).astype(int)
    frame = pd.DataFrame(
        {
            "sample_id": [f"s{i:04d}" for i in range(n)],
            "patient_id": [f"p{p:04d}" for p in patients],
            "x1": z,
            "x2": rng.normal(size=n),
            "const": 1.0,
        }
    )
    if split is not None:
        ids = np.unique(patients)
        part = rng.choice(["train", "val", "test"], size=len(ids), p=list(split))
        frame["split"] = part[np.searchsorted(ids, patients)]
        if flip_val:
            y = np.where(frame["split"] == "val", 1 - y, y)
    frame["label"] = np.array(["neg", "pos"])[y]
    return frame


def table_config(frame: pd.DataFrame, out: Path, **sections: Any) -> dict[str, Any]:
    """Write ``frame`` to ``out/manifest.csv``; a fast config (MLP, no bootstrap, no report).
    ``sections`` update the config's sections, e.g. ``train={"optimizer": "sgd"}``."""
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "manifest.csv", index=False)
    schema: dict[str, Any] = {
        "id_column": "sample_id",
        "patient_column": "patient_id",
        "target": {"task": "binary", "column": "label", "classes": ["neg", "pos"]},
        "modalities": {"record": {"type": "tabular", "columns": ["x1", "x2", "const"]}},
    }
    if "split" in frame:
        schema["split_column"] = "split"
    cfg: dict[str, Any] = {
        "name": out.name,
        "seed": 0,
        "output_dir": str(out / "run"),
        "data": {"manifest": str(out / "manifest.csv"), "schema": schema},
        "model": {"encoders": {"record": {"name": "mlp", "hidden": [16], "dropout": 0.0}}},
        "train": {"epochs": 3, "batch_size": 32, "lr": 0.01, "scheduler": "none", "threads": 1},
        "evaluate": {"bootstrap": 0, "report": False},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def wdbc_config(out: Path, **sections: Any) -> dict[str, Any]:
    """A fast config on the built-in WDBC table (scikit-learn's copy: no data directory)."""
    cfg: dict[str, Any] = {
        "name": out.name,
        "seed": 0,
        "output_dir": str(out),
        "data": {"dataset": "wdbc"},
        "model": {"encoders": {"record": {"name": "mlp", "hidden": [16]}}},
        "train": {"epochs": 3, "batch_size": 64},
        "evaluate": {"bootstrap": 0, "report": False},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg
