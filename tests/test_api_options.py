"""The API's less used keyword options are checked by strict models before any work: a
misspelled one is a ConfigError naming it and the allowed ones, never a TypeError deep inside."""

from __future__ import annotations

from pathlib import Path

import pytest

from medmodal import api
from medmodal.errors import ConfigError
from medmodal.whatif.run import WhatIfOptions, whatif_options


def test_whatif_options_are_checked_before_the_checkpoint_is_read(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(ConfigError, match=r"unknown option 'n_bot'; allowed: .*n_boot"):
        api.whatif(missing, tmp_path / "m.csv", "horTh", n_bot=50)
    with pytest.raises(ConfigError, match="horizon"):
        api.whatif(missing, tmp_path / "m.csv", "horTh", horizon="soon")
    o = whatif_options({"values": ["no", "yes"], "n_boot": 0})
    assert isinstance(o, WhatIfOptions) and (o.reference, o.seed) == (None, 0)


def test_explain_settings_are_checked_before_the_checkpoint_is_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown option 'skipbad'; allowed: .*skip_bad"):
        api.explain(tmp_path / "nope.pt", tmp_path / "m.csv", tmp_path / "out", skipbad=True)


def test_tune_options_are_checked_before_the_config_is_read(tmp_path: Path) -> None:
    space = {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}
    with pytest.raises(ConfigError, match=r"unknown option 'studyname'; allowed: .*study_name"):
        api.tune(tmp_path / "missing.yaml", space, studyname="x")
