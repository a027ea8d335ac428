"""Heart sounds built-in dataset: checksums, download path, bad WAVs in a manifest, training."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from medmodal import api
from medmodal.config import load_config
from medmodal.data.readers.audio import read_audio
from medmodal.data.schema import Schema
from medmodal.datasets import get_dataset
from medmodal.datasets.heart_sounds import CLASSES, LABELS_SHA256, file_names, source_path
from medmodal.errors import DataError, DatasetError
from medmodal.utils.io import file_digest

VICTIM = "MS/New_MS_117.wav"


@pytest.fixture(scope="module")
def prepared(hs: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    p = get_dataset("heart_sounds").prepare(tmp_path_factory.mktemp("hs"), hs.parent)
    return p.manifest, p.schema


def mirror(hs: Path, dest: Path, layout: str = "local", skip: tuple[str, ...] = ()) -> Path:
    """Symlinks to the real clips (``local``: AS/New_AS_001.wav; ``fork``: Data/AS_New/...)."""
    for rel, _ in file_names():
        if rel in skip:
            continue
        link = dest / (rel if layout == "local" else source_path(rel))
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(hs / rel)
    if layout == "local":
        shutil.copy(hs / "labels.csv", dest / "labels.csv")
    return dest


def tamper(src: Path, dest: Path) -> None:
    data = bytearray(src.read_bytes())
    data[5000] ^= 0x01  # one bit of one audio sample
    dest.unlink(missing_ok=True)
    dest.write_bytes(bytes(data))


# -- prepare -------------------------------------------------------------------------------
def test_prepare_real_folder(prepared: tuple[Path, Path]) -> None:
    manifest, schema_path = prepared
    frame = pd.read_csv(manifest)
    assert len(frame) == 1000 and frame["sample_id"].is_unique
    assert frame["label"].value_counts().to_dict() == {c: 200 for c in CLASSES}
    assert (
        frame["patient_id"] == frame["sample_id"]
    ).all()  # no patient ids: one clip, one "patient"
    assert all(Path(p).is_file() for p in frame["audio"])
    schema = Schema.load(schema_path)
    assert schema.target.classes == CLASSES and schema.target.task == "multiclass"
    audio = schema.modalities["audio"]
    assert audio.type == "audio" and audio.preprocess["sample_rate"] == 8000
    info = get_dataset("heart_sounds").info
    assert "no patient" in info.notes.lower() and "unstated" in info.licence
    assert "2344" in info.citation and "yaseen21khan" in info.source


def test_altered_wav_is_named(hs: Path, tmp_path: Path) -> None:
    folder = mirror(hs, tmp_path / "heart_sounds")
    tamper(hs / VICTIM, folder / VICTIM)
    with pytest.raises(DatasetError) as exc:
        get_dataset("heart_sounds").prepare(tmp_path / "out", tmp_path)
    msg = str(exc.value)
    assert str(folder / VICTIM) in msg and "altered" in msg
    assert "yaseen21khan" in msg and "Applied Sciences" in msg


def test_missing_wav_is_named(hs: Path, tmp_path: Path) -> None:
    folder = mirror(hs, tmp_path / "heart_sounds", skip=(VICTIM,))
    with pytest.raises(DatasetError, match="missing") as exc:
        get_dataset("heart_sounds").prepare(tmp_path / "out", folder)
    assert str(folder / VICTIM) in str(exc.value) and "yaseen21khan" in str(exc.value)


def test_altered_labels_csv_is_rejected(hs: Path, tmp_path: Path) -> None:
    folder = mirror(hs, tmp_path / "heart_sounds")
    text = (
        (folder / "labels.csv")
        .read_bytes()
        .replace(b"MS/New_MS_117.wav,MS,", b"MS/New_MS_117.wav,N,")
    )
    (folder / "labels.csv").write_bytes(text)
    with pytest.raises(DatasetError, match="altered") as exc:
        get_dataset("heart_sounds").prepare(tmp_path / "out", tmp_path)
    assert "labels.csv" in str(exc.value)


def test_download_rebuilds_the_checksum_list(hs: Path, tmp_path: Path) -> None:
    """``download`` fetches the fork's Data/<C>_New/*.wav layout (here a file:// mirror)
    and must reproduce the published labels.csv byte for byte."""
    remote = mirror(hs, tmp_path / "remote", layout="fork")
    data = tmp_path / "data"
    p = get_dataset("heart_sounds").prepare(
        tmp_path / "out", data, download=True, mirror=remote.as_uri()
    )
    assert p.facts["rows"] == 1000
    assert file_digest(data / "heart_sounds" / "labels.csv") == LABELS_SHA256
    assert (data / "heart_sounds" / "labels.csv").read_bytes() == (hs / "labels.csv").read_bytes()


def test_download_of_an_altered_file_is_rejected(hs: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    (remote / source_path(VICTIM)).parent.mkdir(parents=True)
    tamper(hs / VICTIM, remote / source_path(VICTIM))  # the mirror serves one altered clip
    local = mirror(hs, tmp_path / "data" / "heart_sounds", skip=(VICTIM,))
    (local / "labels.csv").unlink()  # a fresh download has no checksum list yet
    with pytest.raises(DatasetError, match="do not reproduce the published checksum list"):
        get_dataset("heart_sounds").prepare(
            tmp_path / "out", tmp_path / "data", download=True, mirror=remote.as_uri()
        )
    assert not (local / "labels.csv").exists()  # nothing unverified is blessed
    (local / "AS/New_AS_001.wav").unlink()  # a file the mirror lacks
    with pytest.raises(DatasetError, match="cannot download .*New_AS_001.wav"):
        get_dataset("heart_sounds").prepare(
            tmp_path / "out", tmp_path / "data", download=True, mirror=remote.as_uri()
        )


def test_wavs_without_labels_csv_are_verified_as_a_whole(hs: Path, tmp_path: Path) -> None:
    """A folder of the original WAVs without labels.csv is accepted offline: the checksum list is
    rebuilt from the files and must match the embedded digest; gaps need --download."""
    folder = mirror(hs, tmp_path / "heart_sounds")
    (folder / "labels.csv").unlink()
    assert get_dataset("heart_sounds").prepare(tmp_path / "out", folder).facts["rows"] == 1000
    assert file_digest(folder / "labels.csv") == LABELS_SHA256
    (folder / "labels.csv").unlink()
    (folder / VICTIM).unlink()
    with pytest.raises(DatasetError, match="--download") as exc:
        get_dataset("heart_sounds").prepare(tmp_path / "out", folder)
    assert "1 of 1000 WAV files are missing" in str(exc.value) and str(folder / VICTIM) in str(
        exc.value
    )


def test_no_data_dir_says_where_the_files_come_from() -> None:
    with pytest.raises(DatasetError, match="yaseen21khan"):
        get_dataset("heart_sounds").prepare(Path("unused"), None)


# -- bad WAVs in a manifest ----------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_wavs(hs: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    d = tmp_path_factory.mktemp("bad")
    wave, sr = read_audio(hs / "N/New_N_001.wav")
    real = (hs / "N/New_N_001.wav").read_bytes()
    sf.write(d / "silent.wav", np.zeros(16000, dtype=np.float32), 8000, subtype="PCM_16")
    sf.write(d / "clipped.wav", np.clip(wave * 30, -1, 1), sr, subtype="PCM_16")
    (d / "truncated.wav").write_bytes(real[: len(real) // 2])
    (d / "corrupt.wav").write_bytes(b"RIFF" + np.random.default_rng(0).bytes(3000))
    return {
        "silent": (d / "silent.wav", "silent recording"),
        "clipped": (d / "clipped.wav", "clipped recording"),
        "truncated": (d / "truncated.wav", "truncated"),
        "corrupt": (d / "corrupt.wav", "unreadable or corrupt"),
    }


def _manifest_with(
    prepared: tuple[Path, Path], bad: dict[str, Path], out: Path, on_bad: str
) -> dict:
    manifest, schema_path = prepared
    frame = pd.read_csv(manifest).groupby("label").head(2)
    extra = pd.DataFrame(
        {
            "sample_id": list(bad),
            "patient_id": list(bad),
            "label": "N",
            "audio": [str(p) for p in bad.values()],
        }
    )
    frame = pd.concat([frame, extra], ignore_index=True)
    frame.to_csv(out / "manifest.csv", index=False)
    schema = Schema.load(schema_path).model_dump(mode="json", exclude_none=True)
    schema["modalities"]["audio"]["on_bad"] = on_bad
    return {
        "data": {"manifest": str(out / "manifest.csv"), "schema": schema},
        "output_dir": str(out),
    }


def test_bad_wavs_give_one_clear_error_each(
    prepared: tuple[Path, Path], bad_wavs: dict[str, tuple[Path, str]], tmp_path: Path
) -> None:
    for name, (path, reason) in bad_wavs.items():
        cfg = load_config(_manifest_with(prepared, {name: path}, tmp_path, "error"))
        with pytest.raises(DataError) as exc:
            api.load_data(cfg, tmp_path)
        err = exc.value
        assert err.sample_id == name and err.path == str(path) and err.modality == "audio"
        assert reason in err.reason, (name, err.reason)
        assert f"sample '{name}'" in str(err) and str(path) in str(err)


def test_bad_wavs_become_counted_missing_or_skipped(
    prepared: tuple[Path, Path], bad_wavs: dict[str, tuple[Path, str]], tmp_path: Path
) -> None:
    paths = {k: p for k, (p, _) in bad_wavs.items()}
    cfg = load_config(_manifest_with(prepared, paths, tmp_path, "missing"))
    loaded = api.load_data(cfg, tmp_path)
    assert len(loaded.dataset) == 14  # 10 good + 4 bad rows, none dropped
    assert loaded.dataset.missing_counts == {"audio": {"absent": 0, "bad": 4}}
    flagged = {
        loaded.dataset.ids[i]: f["audio"] for i, f in enumerate(loaded.dataset.bad_inputs) if f
    }
    assert set(flagged) == set(paths)
    assert all(bad_wavs[k][1] in v for k, v in flagged.items())

    cfg = load_config(
        {
            **_manifest_with(prepared, paths, tmp_path, "error"),
            "data": {
                **_manifest_with(prepared, paths, tmp_path, "error")["data"],
                "skip_bad": True,
            },
        }
    )
    loaded = api.load_data(cfg, tmp_path)
    assert len(loaded.dataset) == 10
    assert loaded.bad is not None and sorted(
        e["sample_id"] for e in loaded.bad.to_list()
    ) == sorted(paths)


# -- training ------------------------------------------------------------------------------
@pytest.mark.slow
def test_short_training_beats_chance_on_held_out_clips(hs: Path, tmp_path: Path) -> None:
    p = get_dataset("heart_sounds").prepare(
        tmp_path / "data", hs.parent, per_class=40, preprocess={"duration": 2.0, "hop_length": 256}
    )
    cfg = {
        "name": "hs",
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "data": {
            "manifest": str(p.manifest),
            "schema": str(p.schema),
            "val_fraction": 0.1,
            "test_fraction": 0.3,
        },
        "model": {"encoders": {"audio": {"name": "audio_cnn", "channels": [8, 16, 32, 64]}}},
        "train": {
            "epochs": 4,
            "batch_size": 16,
            "lr": 2e-3,
            "scheduler": "cosine",
            "monitor": "loss",
            "threads": 2,
        },
        "evaluate": {"bootstrap": 200, "report": False},
    }
    run = api.fit(cfg, progress=False)
    test = run.metrics["test"]
    assert run.metrics["n"]["test"] == 60 and sum(run.metrics["n"].values()) == 200
    assert test["accuracy"] > 0.5, test["accuracy"]  # chance: 0.2 (5 balanced classes)
    assert test["ci"]["accuracy"]["low"] > 0.2, test["ci"]["accuracy"]
    assert test["auroc"] > 0.8, test["auroc"]
