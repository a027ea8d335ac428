"""Checkpoint format versions: every version this medmodal ever wrote loads, through the
migrations of ``checkpoint.MIGRATIONS``, into the same predictions; newer or unknown versions are a
CheckpointError naming the file.

A file "written by the previous version" is made here from a current one by the inverse of each
migration (:data:`DOWNGRADES`), so a new format version needs its migration in
``medmodal/checkpoint.py`` and its inverse here (the test fails until both exist).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from conftest import synthetic_table, table_config

from medmodal import api
from medmodal.checkpoint import (
    FITTED_AFTER_TRAINING,
    FORMAT_VERSION,
    MIGRATIONS,
    read_checkpoint,
    save_checkpoint,
)
from medmodal.errors import CheckpointError
from medmodal.predictor import Predictor

pytestmark = pytest.mark.usefixtures("one_thread")


def _v2_to_v1(body: dict[str, Any]) -> dict[str, Any]:
    """A version 1 file written before calibration, conformal sets and survival existed."""
    return {k: v for k, v in body.items() if not (k in FITTED_AFTER_TRAINING and v is None)}


# format version n -> the inverse of MIGRATIONS[n - 1]: a version n body as version n - 1 wrote it
DOWNGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {2: _v2_to_v1}


def write_as(version: int, source: Path, dest: Path) -> Path:
    """``source`` (current format) rewritten as format ``version`` would have written it."""
    body = torch.load(source, map_location="cpu", weights_only=True)
    assert body["format_version"] == FORMAT_VERSION
    for v in range(FORMAT_VERSION, version, -1):
        assert v in DOWNGRADES, f"format {v}: add the inverse of MIGRATIONS[{v - 1}] to DOWNGRADES"
        body = DOWNGRADES[v](body)
        body["format_version"] = v - 1
    torch.save(body, dest)
    return dest


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("ckpt")
    frame = synthetic_table(120)
    run = api.fit(table_config(frame, out, train={"epochs": 2}), progress=False)
    return run.checkpoint, frame


def test_every_version_has_a_migration_to_the_next() -> None:
    assert sorted(MIGRATIONS) == list(range(1, FORMAT_VERSION))
    assert sorted(DOWNGRADES) == list(range(2, FORMAT_VERSION + 1))


@pytest.mark.parametrize("version", range(1, FORMAT_VERSION))
def test_a_previous_version_checkpoint_loads_into_identical_predictions(
    version: int, trained: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    ckpt, frame = trained
    old = write_as(version, ckpt, tmp_path / f"v{version}.pt")
    raw = torch.load(old, weights_only=True)
    assert raw["format_version"] == version
    if version == 1:
        assert not set(FITTED_AFTER_TRAINING) & set(raw)  # what the migration has to add
    body = read_checkpoint(old)
    assert body["format_version"] == FORMAT_VERSION
    assert body.keys() == read_checkpoint(ckpt).keys()
    loaded = Predictor.load(old)
    assert loaded.temperature is None and loaded.conformal is None and loaded.survival is None
    pd.testing.assert_frame_equal(api.predict(old, frame), api.predict(ckpt, frame))


def test_a_newer_or_unknown_version_names_the_file(
    trained: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    body = torch.load(trained[0], weights_only=True)
    for version, match in [
        (FORMAT_VERSION + 1, "newer medmodal"),
        (0, "unknown checkpoint format version 0"),
        ("2", "unknown checkpoint format version '2'"),
    ]:
        path = tmp_path / f"v{version}.pt"
        torch.save({**body, "format_version": version}, path)
        with pytest.raises(CheckpointError, match=match) as err:
            read_checkpoint(path)
        assert str(path) in str(err.value)
        with pytest.raises(CheckpointError, match=match):
            Predictor.load(path)


def test_a_missing_migration_is_a_checkpoint_error(
    trained: tuple[Path, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = write_as(1, trained[0], tmp_path / "v1.pt")
    monkeypatch.delitem(MIGRATIONS, 1)
    with pytest.raises(CheckpointError, match="no migration from checkpoint format 1 to 2"):
        read_checkpoint(old)


def test_migration_leaves_pretraining_files_alone(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "enc.pt", {"kind": "pretrained-encoder", "encoder": "vit"})
    body = torch.load(path, weights_only=True)
    torch.save({**body, "format_version": 1}, path)
    assert not set(FITTED_AFTER_TRAINING) & set(read_checkpoint(path))
