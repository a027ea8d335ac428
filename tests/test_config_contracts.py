"""Foundation II contracts: typed options everywhere (a typo or a bad value is a ConfigError naming
it), one decision rule, the positive class, the reader table, safe manifest paths, clear split
errors, and report notes that read as sentences."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import synthetic_table, table_config
from PIL import Image

from medmodal import api
from medmodal.config import load_config
from medmodal.data.preprocess import PROCESSORS, create_processor
from medmodal.data.readers import IMAGE_READERS, read_image
from medmodal.data.schema import ModalitySpec, Schema
from medmodal.datasets import DATASETS, prepare_dataset
from medmodal.errors import CheckpointError, ConfigError, DataError, ManifestError
from medmodal.fusion import FUSIONS
from medmodal.models.encoders import ENCODERS
from medmodal.models.encoders.base import create_encoder, encoder_modalities
from medmodal.models.heads import HEADS

TYPO = "colour_depthh"
INFO = {
    "image": {"in_channels": 1, "spatial_dims": 2, "size": [28, 28]},
    "text": {"tokenizer": "word", "max_len": 8, "vocab_size": 20, "pad_id": 0},
    "audio": {"in_channels": 1, "n_features": 20, "n_frames": 32},
    "signal": {"in_channels": 2, "length": 128, "fs": 100},
    "tabular": {"n_numeric": 3, "cardinalities": [4]},
}


def _names_typo(exc: pytest.ExceptionInfo[ConfigError], allowed: list[str]) -> None:
    msg = str(exc.value)
    assert f"unknown option '{TYPO}'" in msg or f"{TYPO}'" in msg, msg
    for key in allowed:
        assert key in msg, (key, msg)


@pytest.mark.parametrize("name", ENCODERS.names())
def test_every_encoder_refuses_a_misspelled_option(name: str) -> None:
    allowed = list(ENCODERS.options(name))
    with pytest.raises(ConfigError) as exc:
        create_encoder(
            name, encoder_modalities(name)[0], INFO[encoder_modalities(name)[0]], **{TYPO: 1}
        )
    _names_typo(exc, allowed)


@pytest.mark.parametrize("name", FUSIONS.names())
def test_every_fusion_refuses_a_misspelled_option(name: str) -> None:
    with pytest.raises(ConfigError) as exc:
        FUSIONS.create(name, {TYPO: 1}, in_dims={"a": 4, "b": 3}, n_outputs=1, task="binary")
    _names_typo(exc, list(FUSIONS.options(name)))


@pytest.mark.parametrize("name", HEADS.names())
def test_every_head_refuses_a_misspelled_option(name: str) -> None:
    with pytest.raises(ConfigError) as exc:
        HEADS.create(name, {TYPO: 1}, in_dim=4, n_outputs=1)
    _names_typo(exc, list(HEADS.options(name)))


def _spec(mtype: str, preprocess: dict[str, Any]) -> ModalitySpec:
    cols = {"columns": ["a"]} if mtype == "tabular" else {"column": "c"}
    return ModalitySpec(type=mtype, preprocess=preprocess, **cols)


@pytest.mark.parametrize("mtype", PROCESSORS.names())
def test_every_processor_refuses_a_misspelled_option(mtype: str) -> None:
    with pytest.raises(ConfigError) as exc:
        create_processor("m", _spec(mtype, {TYPO: 1}))
    cls = type(create_processor("m", _spec(mtype, {})))
    _names_typo(exc, sorted(cls.Options.model_fields))


@pytest.mark.parametrize(
    ("mtype", "good_key"),
    [("image", "flip"), ("audio", "gain_db"), ("signal", "noise"), ("text", "token_dropout")],
)
def test_a_misspelled_augmentation_names_the_nested_key(mtype: str, good_key: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"unknown option 'augment\.{good_key}p'; allowed: .*{good_key}"
    ):
        create_processor("m", _spec(mtype, {"augment": {f"{good_key}p": 0.5}}))


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_refuses_a_misspelled_option(name: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:  # checked before any file is read
        prepare_dataset(name, tmp_path, tmp_path / "nowhere", {TYPO: 1})
    assert f"unknown option '{TYPO}'" in str(exc.value)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.epochz=3", "train.epochz"),
        ("evaluate.treshold=0.3", "evaluate.treshold"),
        ("model.fusion.dimm=4", "dimm"),
        ("model.encoders.record.hiden=[8]", "hiden"),
        ("model.head.name=mlpp", "mlpp"),
        ("train.lr=-1", "train.lr"),
        ("train.device=gpu0", "train.device"),
        ("evaluate.threshold=1.5", "evaluate.threshold"),
        ("data.val_fraction=1.2", "data.val_fraction"),
    ],
)
def test_bad_config_keys_and_values_fail_before_training(
    override: str, needle: str, tmp_path: Path
) -> None:
    cfg = table_config(synthetic_table(60), tmp_path)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        api.fit(cfg, [override], progress=False)
    assert not (tmp_path / "run" / "best.pt").exists()


@pytest.mark.parametrize(
    ("preprocess", "fusion", "needle"),
    [
        ({"size": [0, 28]}, {"name": "concat"}, "size"),
        ({"size": [28, 28, 28, 28]}, {"name": "concat"}, "size"),
        ({"channels": 2}, {"name": "concat"}, "channels"),
        ({"size": [28, 28]}, {"name": "attention", "dim": 30, "heads": 4}, "divisible"),
        ({"size": [28, 28]}, {"name": "late", "combine": "average"}, "combine"),
    ],
)
def test_bad_values_reach_the_user_as_config_errors(
    preprocess: dict[str, Any], fusion: dict[str, Any], needle: str, tmp_path: Path
) -> None:
    _write_pngs(tmp_path, 12)
    cfg = _image_config(tmp_path, preprocess, fusion)
    with pytest.raises(ConfigError, match=needle):
        api.fit(cfg, progress=False)


def _write_pngs(root: Path, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        Image.fromarray((rng.random((28, 28)) * 255).astype(np.uint8)).save(root / f"i{i}.png")
        rows.append({"sample_id": f"s{i}", "image": f"i{i}.png", "age": i, "label": "ab"[i % 2]})
    frame = pd.DataFrame(rows)
    frame.to_csv(root / "manifest.csv", index=False)
    return frame


def _image_config(root: Path, preprocess: dict[str, Any], fusion: dict[str, Any]) -> dict[str, Any]:
    schema = {
        "id_column": "sample_id",
        "target": {"task": "binary", "column": "label"},
        "modalities": {
            "image": {"type": "image", "column": "image", "preprocess": preprocess},
            "record": {"type": "tabular", "columns": ["age"]},
        },
    }
    return {
        "output_dir": str(root / "run"),
        "data": {
            "manifest": str(root / "manifest.csv"),
            "schema": schema,
            "val_fraction": 0.25,
            "test_fraction": 0.25,
        },
        "model": {
            "encoders": {"image": {"name": "baseline_cnn", "hidden": 8, "filters": 4}},
            "fusion": fusion,
        },
        "train": {"epochs": 1, "batch_size": 4, "threads": 1},
        "evaluate": {"bootstrap": 0, "report": False},
    }


def test_every_registered_constructor_takes_typed_keyword_options() -> None:
    """No ``**kwargs`` anywhere a user option goes: a typo could never be caught there."""
    for registry in (ENCODERS, FUSIONS, HEADS):
        for name in registry.names():
            params = inspect.signature(registry.get(name)).parameters.values()
            assert not any(p.kind is p.VAR_KEYWORD for p in params), (registry.kind, name)
            registry.options_model(name)  # builds: every option is typed


# -- one decision rule ------------------------------------------------------------------------
def test_predictions_csv_uses_the_configured_threshold(tmp_path: Path) -> None:
    frame = synthetic_table(200, noise=0.2, split=(0.6, 0.2, 0.2))
    cfg = table_config(
        frame, tmp_path, train={"epochs": 15}, evaluate={"threshold": 0.3, "bootstrap": 0}
    )
    run = api.fit(cfg, progress=False)
    pred = pd.read_csv(run.run_dir / "predictions_test.csv")
    called = pred["prob_pos"] > 0.3
    assert (pred["prob_pos"] > 0.5).sum() < called.sum() < len(pred)  # the threshold matters here
    assert ((pred["predicted"] == "pos") == called).all()
    cm = np.asarray(run.metrics["test"]["confusion_matrix"])
    truth = pred["label"] == "pos"
    assert cm[1, 1] == int((truth & called).sum()) and cm[0, 1] == int((~truth & called).sum())
    again = api.predict(run.checkpoint, tmp_path / "manifest.csv")
    assert ((again["predicted"] == "pos") == (again["prob_pos"] > 0.3)).all()


# -- the positive class -----------------------------------------------------------------------
def test_binary_target_names_its_positive_class(tmp_path: Path) -> None:
    frame = synthetic_table(120, split=(0.6, 0.2, 0.2))
    cfg = table_config(frame, tmp_path)
    cfg["data"]["schema"]["target"] = {"task": "binary", "column": "label", "positive": "neg"}
    cfg["evaluate"] = {"bootstrap": 0, "report": True}
    run = api.fit(cfg, progress=False)
    pred = pd.read_csv(run.run_dir / "predictions_test.csv")
    assert list(pred.columns[-4:-2]) == ["prob_pos", "prob_neg"]  # P(positive class) last
    m = run.metrics["test"]
    assert m["class_names"] == ["pos", "neg"]
    assert m["recall"] == m["per_class"]["neg"]["sensitivity"]
    html = (run.run_dir / "report.html").read_text()
    assert "The positive class is &#x27;neg&#x27;" in html
    cfg["data"]["schema"]["target"]["positive"] = "maybe"
    with pytest.raises(ManifestError, match="positive class 'maybe'"):
        api.fit(cfg, progress=False)


def test_built_in_sets_choose_the_finding_as_positive(tmp_path: Path, data_dir: Path) -> None:
    for name, positive in (
        ("breastmnist", "malignant"),
        ("pneumoniamnist", "pneumonia"),
        ("wdbc", "malignant"),
        ("covid_cxr", "COVID-19"),
    ):
        prepared = prepare_dataset(
            name, tmp_path / name, data_dir, {"limit": 5} if "mnist" in name else {}
        )
        assert Schema.load(prepared.schema).target.positive == positive


# -- readers: one table, content first --------------------------------------------------------
def test_reader_table_reads_by_content_and_lists_suffixes(tmp_path: Path) -> None:
    img = (np.arange(64, dtype=np.uint8).reshape(8, 8)) * 3
    Image.fromarray(img).save(tmp_path / "x.png")
    disguised = tmp_path / "scan.dcm"
    disguised.write_bytes((tmp_path / "x.png").read_bytes())
    np.testing.assert_allclose(read_image(disguised), read_image(tmp_path / "x.png"))
    np.save(tmp_path / "arr.bin", np.ones((8, 8), dtype=np.float32))  # .npy content, odd suffix
    (tmp_path / "arr.bin.npy").rename(tmp_path / "arr.bin")
    assert read_image(tmp_path / "arr.bin").shape == (1, 8, 8)
    (tmp_path / "notes.xyz").write_text("not an image")
    with pytest.raises(DataError, match="unsupported image format .xyz"):
        read_image(tmp_path / "notes.xyz")
    assert {"dicom", "nifti", "npy", "pil"} <= set(IMAGE_READERS.names())


def test_folder_prediction_uses_the_reader_table(tmp_path: Path) -> None:
    import nibabel as nib

    data = tmp_path / "d"
    data.mkdir()
    frame = _write_pngs(data, 12)
    cfg = _image_config(data, {"size": [28, 28]}, {"name": "concat"})
    cfg["data"]["schema"]["modalities"].pop("record")
    run = api.fit(cfg, progress=False)
    folder = tmp_path / "new"
    folder.mkdir()
    Image.open(data / frame["image"][0]).save(folder / "a.png")
    vol = np.random.default_rng(0).random((28, 28, 1)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), folder / "b.nii.gz")
    (folder / "readme.txt").write_text("not an image")
    out = api.predict(run.checkpoint, folder)
    assert sorted(out["sample_id"]) == ["a.png", "b.nii.gz"]


# -- safe paths, clear split errors -----------------------------------------------------------
def test_a_manifest_path_may_not_leave_the_data_root(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _write_pngs(data, 12)
    frame = pd.read_csv(data / "manifest.csv")
    frame.loc[3, "image"] = "../../etc/passwd"
    frame.to_csv(data / "manifest.csv", index=False)
    cfg = _image_config(data, {"size": [28, 28]}, {"name": "concat"})
    with pytest.raises(
        DataError, match=r"sample 's3'.*'\.\./\.\./etc/passwd' leaves the data root"
    ):
        api.fit(cfg, progress=False)
    cfg["data"]["skip_bad"] = True
    run = api.fit(cfg, progress=False)
    assert [b["sample_id"] for b in run.bad_samples] == ["s3"]  # the others (inside) are read


def test_a_data_set_too_small_to_split_is_a_data_error(tmp_path: Path) -> None:
    cfg = table_config(synthetic_table(2), tmp_path)
    with pytest.raises(DataError, match="cannot be split"):
        api.fit(cfg, progress=False)
    with pytest.raises(DataError, match="cannot fill 5 cross-validation folds"):
        api.cross_validate(cfg, k=5, progress=False)


def test_no_message_talks_about_issues() -> None:
    src = Path(__file__).resolve().parents[1] / "src" / "medmodal"
    # a quoted "issue" is FHIR's OperationOutcome.issue field (serve/hospital.py), not a message
    hits = [
        p.name
        for p in src.rglob("*.py")
        if re.search(r"\bissue\b", re.sub(r"[\"']issue[\"']", "", p.read_text()))
    ]
    assert not hits, hits


# -- report notes read as sentences -----------------------------------------------------------
@pytest.mark.slow  # a full run with the report
def test_report_notes_are_sentences_not_dicts(tmp_path: Path) -> None:
    frame = synthetic_table(160, split=(0.6, 0.2, 0.2))
    frame.loc[::7, "x2"] = np.nan
    cfg = table_config(frame, tmp_path, evaluate={"bootstrap": 0, "report": True})
    run = api.fit(cfg, progress=False)
    html = (run.run_dir / "report.html").read_text()
    notes = html[html.index('id="notes"') :]
    notes = notes[: notes.index("</section>")] if "</section>" in notes else notes
    assert "Missing modalities per split" in notes
    assert "{&#x27;" not in notes and "{'" not in notes
    cv = api.cross_validate(cfg, k=3, progress=False)
    html = cv.report.read_text()
    assert "Per-fold test metrics" in html and "pooled out-of-fold predictions" in html


def test_load_config_reports_nested_unknown_keys_with_allowed_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown option 'train\.optimiser'; allowed: .*optimizer"
    ):
        load_config({"train": {"optimiser": "adam"}})
    with pytest.raises(ConfigError, match="model.modality_dropout"):
        load_config({"model": {"modality_dropout": 1.5}})


def test_fitted_state_refuses_other_options_but_not_other_augmentation() -> None:
    raws = [np.full((1, 28, 28), v, dtype=np.float32) for v in (0.2, 0.4, 0.9)]
    fitted = create_processor("m", _spec("image", {"size": [28, 28], "augment": {"flip": 0.5}}))
    state = fitted.fit(raws).state_dict()
    plain = create_processor("m", _spec("image", {"size": [28, 28]})).load_state_dict(state)
    assert plain.mean_ == fitted.mean_ and plain.std_ == fitted.std_
    with pytest.raises(CheckpointError, match=r"fitted with other \['options'\]"):
        create_processor("m", _spec("image", {"size": [32, 32]})).load_state_dict(state)
