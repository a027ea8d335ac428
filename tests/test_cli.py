"""The command line: help, datasets, and bad input as one clear line (never a traceback)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml

from medmodal.data.schema import Schema


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CI": "true"}
    return subprocess.run(
        [sys.executable, "-m", "medmodal.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


@pytest.mark.slow  # --help of every command
def test_help_on_every_command() -> None:
    for cmd in (
        [],
        ["train"],
        ["evaluate"],
        ["predict"],
        ["whatif"],
        ["demo"],
        ["datasets", "prepare"],
        ["models", "list"],
    ):
        res = run_cli(*cmd, "--help")
        assert res.returncode == 0, res.stderr
        assert "Usage" in res.stdout


@pytest.mark.slow
def test_datasets_list_and_info() -> None:
    res = run_cli("datasets", "list")
    assert res.returncode == 0 and "breastmnist" in res.stdout and "wdbc" in res.stdout
    res = run_cli("datasets", "info", "breastmnist")
    assert "Scientific Data" in res.stdout and "CC BY 4.0" in res.stdout
    res = run_cli("datasets", "info", "no_such_set")
    assert (
        res.returncode == 2
        and "unknown dataset 'no_such_set'" in res.stderr
        and "Traceback" not in res.stderr
    )


@pytest.mark.slow
def test_models_list() -> None:
    res = run_cli("models", "list")
    assert res.returncode == 0
    for name in ("resnet18", "densenet121", "baseline_cnn", "concat", "attention", "gated", "late"):
        assert name in res.stdout


def _image_manifest(tmp_path: Path, pngs: Callable, n: int = 24) -> tuple[Path, Path]:
    """A small manifest of real BreastMNIST images written as PNG (``medmnist_pngs``)."""
    rows = [
        {"sid": f"s{i}", "pid": f"p{i}", "path": name, "y": ["malignant", "benign"][label]}
        for i, (name, label) in enumerate(pngs(tmp_path, "breastmnist", n))
    ]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    schema = tmp_path / "schema.yaml"
    Schema.load(
        {
            "id_column": "sid",
            "patient_column": "pid",
            "target": {"task": "binary", "column": "y", "classes": ["benign", "malignant"]},
            "modalities": {
                "image": {
                    "type": "image",
                    "column": "path",
                    "preprocess": {"size": [28, 28], "channels": 1},
                }
            },
        }
    ).save(schema)
    return manifest, schema


def _config(tmp_path: Path, manifest: Path, schema: Path) -> Path:
    cfg = {
        "name": "cli",
        "output_dir": str(tmp_path / "run"),
        "data": {
            "manifest": str(manifest),
            "schema": str(schema),
            "val_fraction": 0.25,
            "test_fraction": 0.25,
        },
        "model": {"encoders": {"image": {"name": "baseline_cnn"}}},
        "train": {"epochs": 1, "batch_size": 8},
        "evaluate": {"bootstrap": 50},
    }
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.mark.parametrize(
    "case, expect",
    [  # all in the slow tier: each starts a medmodal process (several seconds)
        pytest.param("missing", "file not found", marks=pytest.mark.slow),
        pytest.param("truncated_png", "cannot decode image", marks=pytest.mark.slow),
        pytest.param("corrupt_dicom", "truncated", marks=pytest.mark.slow),
        pytest.param("text_as_nifti", ".nii", marks=pytest.mark.slow),
        pytest.param("bad_label", "not in the label map", marks=pytest.mark.slow),
    ],
)
def test_bad_input_is_one_line(
    tmp_path: Path, medmnist_pngs: Callable, case: str, expect: str
) -> None:
    from pydicom.data import get_testdata_file

    manifest, schema = _image_manifest(tmp_path, medmnist_pngs)
    frame = pd.read_csv(manifest)
    if case == "missing":
        frame.loc[3, "path"] = "gone.png"
    elif case == "truncated_png":
        (tmp_path / "cut.png").write_bytes((tmp_path / "img_3.png").read_bytes()[:40])
        frame.loc[3, "path"] = "cut.png"
    elif case == "corrupt_dicom":
        shutil.copy(get_testdata_file("MR_truncated.dcm"), tmp_path / "mr.dcm")
        frame.loc[3, "path"] = "mr.dcm"
    elif case == "text_as_nifti":
        (tmp_path / "scan.nii").write_text("not a nifti file")
        frame.loc[3, "path"] = "scan.nii"
    else:
        frame.loc[3, "y"] = "cyst"
    frame.to_csv(manifest, index=False)
    res = run_cli("train", str(_config(tmp_path, manifest, schema)))
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    err = " ".join(res.stderr.split())
    assert err.startswith("error:") and "'s3'" in err and expect in err, err


@pytest.mark.slow
def test_wrong_columns_and_empty_manifest(tmp_path: Path, medmnist_pngs: Callable) -> None:
    manifest, schema = _image_manifest(tmp_path, medmnist_pngs)
    frame = pd.read_csv(manifest).rename(columns={"path": "file"})
    frame.to_csv(manifest, index=False)
    res = run_cli("train", str(_config(tmp_path, manifest, schema)))
    assert res.returncode == 2 and "lacks column(s) ['path']" in " ".join(res.stderr.split())
    manifest.write_text("sid,pid,path,y\n")
    res = run_cli("train", str(_config(tmp_path, manifest, schema)))
    assert res.returncode == 2 and "has no rows" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_train_skip_bad_then_predict_and_evaluate(tmp_path: Path, medmnist_pngs: Callable) -> None:
    manifest, schema = _image_manifest(tmp_path, medmnist_pngs, n=40)
    frame = pd.read_csv(manifest)
    frame.loc[5, "path"] = "gone.png"
    frame.to_csv(manifest, index=False)
    res = run_cli("train", str(_config(tmp_path, manifest, schema)), "--skip-bad")
    assert res.returncode == 0, res.stderr
    assert "1 sample(s) skipped" in res.stderr
    ckpt = tmp_path / "run" / "best.pt"
    out = tmp_path / "pred.csv"
    res = run_cli("predict", str(ckpt), str(manifest), "--out", str(out), "--skip-bad")
    assert res.returncode == 0, res.stderr
    pred = pd.read_csv(out)
    assert len(pred) == 39 and "s5" not in set(pred["sample_id"])
    assert (tmp_path / "pred.skipped.json").read_text().count("gone.png") == 1
    res = run_cli(
        "evaluate",
        str(ckpt),
        str(manifest),
        "--skip-bad",
        "--out-dir",
        str(tmp_path / "ev"),
        "--bootstrap",
        "50",
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "ev" / "report.html").is_file()
    res = run_cli("predict", str(tmp_path / "nope.pt"), str(manifest))
    assert res.returncode == 2 and "checkpoint not found" in res.stderr


@pytest.mark.slow
def test_prepare_passes_dataset_options(tmp_path: Path, data_dir: Path) -> None:
    res = run_cli(
        "datasets",
        "prepare",
        "covid_cxr",
        "--out",
        str(tmp_path / "c"),
        "--data-dir",
        str(data_dir),
        "-o",
        "target=survival",
    )
    assert res.returncode == 0, res.stderr
    frame = pd.read_csv(tmp_path / "c" / "manifest.csv")
    finding = run_cli(
        "datasets",
        "prepare",
        "covid_cxr",
        "--out",
        str(tmp_path / "f"),
        "--data-dir",
        str(data_dir),
    )
    assert finding.returncode == 0, finding.stderr
    assert len(frame) != len(pd.read_csv(tmp_path / "f" / "manifest.csv"))
    res = run_cli("datasets", "prepare", "wdbc", "--out", str(tmp_path / "w"), "-o", "novalue")
    assert res.returncode == 2 and "key=value" in res.stderr


def test_audit_of_a_built_in_dataset_with_options(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medmodal.cli import app

    runner = CliRunner()
    base = ["audit", "--dataset", "fusion_probe", "-o", "n=40", "--no-near"]
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "a.json")])
    assert res.exit_code == 0, res.output
    assert "leakage audit: 40 rows" in res.output and (tmp_path / "a.json").is_file()
    res = runner.invoke(app, [*base, "--split-column", "nope"])
    assert res.exit_code == 2 and "has no column 'nope'" in res.output
    res = runner.invoke(app, [*base, "-o", "colour=1"])
    assert res.exit_code == 2 and "unknown option 'colour'; allowed:" in res.output
    res = runner.invoke(app, ["audit"])
    assert res.exit_code == 2 and "--dataset NAME" in res.output


def test_shared_options_are_declared_once() -> None:
    import typing

    from medmodal import cli

    def alias_of(fn: Callable, param: str) -> object:
        return typing.get_type_hints(fn, include_extras=True)[param]

    for fn in (cli.evaluate, cli.predict, cli.explain, cli.whatif, cli.export):
        assert alias_of(fn, "checkpoint") == cli.CheckpointArg
    for fn in (cli.evaluate, cli.predict, cli.explain, cli.whatif, cli.audit):
        assert alias_of(fn, "root") == cli.RootOpt
    for fn in (cli.train, cli.evaluate, cli.predict, cli.explain):
        assert alias_of(fn, "skip_bad") == cli.SkipBadOpt
    for fn in (cli.train, cli.tune, cli.pretrain):
        assert alias_of(fn, "overrides") == cli.SetOpt
