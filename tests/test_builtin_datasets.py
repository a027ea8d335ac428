"""Built-in datasets declare their options where they are registered, and every way in (the
registry, ``prepare`` keywords, ``prepare_dataset``) validates them before any file is read."""

from __future__ import annotations

import inspect
from pathlib import Path

import pandas as pd
import pytest

from medmodal.datasets import DATASETS, get_dataset, prepare_dataset
from medmodal.datasets.probe import DEFAULTS, ProbeOptions
from medmodal.errors import ConfigError
from medmodal.options import Strict


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_declares_a_strict_options_model(name: str) -> None:
    model = DATASETS.entry(name).options
    assert model is not None and issubclass(model, Strict)
    ds = get_dataset(name)
    assert isinstance(ds.options, model) and ds.info.name == name
    assert list(inspect.signature(ds.write).parameters) == ["out_dir", "data_dir", "options"]


def test_options_given_at_creation_and_as_keywords(tmp_path: Path) -> None:
    ds = DATASETS.create("fusion_probe", {"n": 40, "seed": 2})
    assert (ds.options.n, ds.options.seed, ds.options.noise) == (40, 2, DEFAULTS["noise"])
    a = ds.prepare(tmp_path / "a")
    b = ds.prepare(tmp_path / "b", seed=5)  # overrides seed, keeps n
    assert a.facts["rows"] == b.facts["rows"] == 40
    fa, fb = pd.read_csv(a.manifest), pd.read_csv(b.manifest)
    assert list(fa["sample_id"]) == list(fb["sample_id"]) and not fa.equals(fb)
    assert ds.options.seed == 2  # the created dataset is unchanged
    assert DEFAULTS == ProbeOptions().model_dump()


def test_a_bad_option_is_a_config_error_before_any_file_is_read(tmp_path: Path) -> None:
    ds = get_dataset("mitdb")  # no data dir: reading would be a DatasetError
    with pytest.raises(ConfigError, match=r"dataset 'mitdb' options: unknown option 'windw'"):
        ds.prepare(tmp_path, None, windw=[0.2, 0.4])
    with pytest.raises(ConfigError, match="report_mask"):
        prepare_dataset("ptbxl", tmp_path, tmp_path / "nowhere", {"report_mask": "maybe"})
    with pytest.raises(ConfigError, match=r"unknown option 'sise'; allowed: .*size"):
        get_dataset("breastmnist", {"sise": 64})
    with pytest.raises(ConfigError, match="unknown dataset 'no_such_set'"):
        get_dataset("no_such_set")
