"""Audio: reader, quality checks, log-mel / MFCC processor, SpecAugment and audio_cnn."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from medmodal.data.preprocess.audio import AudioProcessor
from medmodal.data.preprocess.base import PROCESSORS
from medmodal.data.readers.audio import check_audio, read_audio
from medmodal.data.schema import ModalitySpec
from medmodal.errors import CheckpointError, ConfigError, DataError
from medmodal.models.encoders import DEFAULT_ENCODER, create_encoder

CLIP = "AS/New_AS_001.wav"


@pytest.fixture(scope="module")
def labels(hs: Path) -> pd.DataFrame:
    return pd.read_csv(hs / "labels.csv")


def proc(**opts: object) -> AudioProcessor:
    return AudioProcessor("pcg", ModalitySpec(type="audio", column="path", preprocess=opts))


def row(path: str | Path) -> dict[str, str]:
    return {"path": str(path)}


# -- reader --------------------------------------------------------------------------------
def test_read_real_wav_matches_labels(hs: Path, labels: pd.DataFrame) -> None:
    for _, r in labels.iloc[[0, 250, 999]].iterrows():
        wave, sr = read_audio(hs / r["file"])
        assert sr == 8000 == r["sample_rate"]
        assert wave.dtype == np.float32 and wave.ndim == 1
        assert len(wave) == r["n_samples"]
        assert 0.05 < np.abs(wave).max() <= 1.0


def test_resample_to_16k_doubles_length_deterministically(hs: Path, labels: pd.DataFrame) -> None:
    n = int(labels.set_index("file").loc[CLIP, "n_samples"])
    a, sr = read_audio(hs / CLIP, sample_rate=16000)
    b, _ = read_audio(hs / CLIP, sample_rate=16000)
    assert sr == 16000 and len(a) == 2 * n
    assert np.array_equal(a, b)
    native, _ = read_audio(hs / CLIP)
    # band-limited interpolation keeps the original samples (up to filter ripple)
    assert np.abs(a[::2] - native).max() < 0.05 * np.abs(native).max()


def test_flac_and_stereo_read_as_mono(hs: Path, tmp_path: Path) -> None:
    wave, sr = read_audio(hs / CLIP)
    sf.write(tmp_path / "c.flac", wave, sr, subtype="PCM_16")
    flac, sr2 = read_audio(tmp_path / "c.flac")
    assert sr2 == sr and np.array_equal(flac, wave)  # lossless, same 16-bit grid
    sf.write(
        tmp_path / "st.wav", np.stack([wave, np.zeros_like(wave)], axis=1), sr, subtype="FLOAT"
    )
    stereo, _ = read_audio(tmp_path / "st.wav")
    np.testing.assert_allclose(stereo, wave / 2, atol=1e-7)


def test_missing_truncated_corrupt_empty_files_raise_dataerror(hs: Path, tmp_path: Path) -> None:
    real = (hs / CLIP).read_bytes()
    (tmp_path / "trunc.wav").write_bytes(real[:100])
    (tmp_path / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "empty.wav").write_bytes(b"")
    sf.write(tmp_path / "noframes.wav", np.zeros(0, dtype=np.float32), 8000)
    cases = {
        "missing.wav": "not found",
        "trunc.wav": "truncated",
        "corrupt.wav": "unreadable",
        "empty.wav": "0 bytes",
        "noframes.wav": "zero-length",
    }
    for name, reason in cases.items():
        with pytest.raises(DataError) as exc:
            read_audio(tmp_path / name)
        assert reason in exc.value.reason, (name, exc.value.reason)
        assert exc.value.path == str(tmp_path / name)
        assert name in str(exc.value)


def test_nan_samples_raise(tmp_path: Path) -> None:
    x = np.sin(np.arange(8000) / 10).astype(np.float32) * 0.5
    x[100] = np.nan
    sf.write(tmp_path / "nan.wav", x, 8000, subtype="FLOAT")
    with pytest.raises(DataError, match="NaN"):
        read_audio(tmp_path / "nan.wav")


def test_silent_and_clipped_recordings(hs: Path, tmp_path: Path) -> None:
    sf.write(tmp_path / "silent.wav", np.zeros(16000, dtype=np.float32), 8000, subtype="PCM_16")
    wave, sr = read_audio(hs / CLIP)
    sf.write(tmp_path / "clipped.wav", np.clip(wave * 20, -1, 1), sr, subtype="PCM_16")
    p = proc()
    with pytest.raises(DataError, match="silent recording") as exc:
        p.read(row(tmp_path / "silent.wav"), None)
    assert "silent.wav" in str(exc.value)
    with pytest.raises(
        DataError, match=r"clipped recording: \d+\.\d% of samples at full scale"
    ) as exc:
        p.read(row(tmp_path / "clipped.wav"), None)
    assert "clipped.wav" in str(exc.value)
    # the checks can be turned off
    off = proc(check_silent=False, check_clipped=False)
    assert off.read(row(tmp_path / "silent.wav"), None).shape == (64, 188)
    assert off.read(row(tmp_path / "clipped.wav"), None).shape == (64, 188)
    # and the limit is configurable: 1% rejects the real, mildly clipped AS_169 (1.4%)
    mild, _ = read_audio(hs / "AS/New_AS_169.wav")
    check_audio(mild, 8000)  # default limit 5% keeps it
    with pytest.raises(DataError, match="clipped"):
        check_audio(mild, 8000, clip_fraction=0.01)


def test_real_recordings_pass_default_checks(hs: Path, labels: pd.DataFrame) -> None:
    files = labels["file"].iloc[::40].tolist()
    for f in files:
        wave, sr = read_audio(hs / f)
        check_audio(wave, sr, hs / f)  # raises DataError for a silent or clipped clip
        with pytest.raises(DataError, match="silent"):  # the same clip, silenced, is refused
            check_audio(wave * 1e-5, sr, hs / f)
    assert len(files) == 25 and len({f.split("/")[0] for f in files}) == 5  # every class


# -- processor -----------------------------------------------------------------------------
def test_registered_and_shapes(hs: Path) -> None:
    p = PROCESSORS.get("audio")(name="pcg", spec=ModalitySpec(type="audio", column="path"))
    assert isinstance(p, AudioProcessor)
    raw = p.read(row(CLIP), hs)
    assert raw.shape == (64, 188) and raw.dtype == np.float32
    assert p.info() == {
        "in_channels": 1,
        "n_features": 64,
        "n_frames": 188,
        "features": "logmel",
        "sample_rate": 8000,
    }
    m = proc(features="mfcc", n_mfcc=20, deltas=2, duration=2.0, hop_length=100)
    x = m.transform(m.read(row(CLIP), hs))
    assert x.shape == (1, 60, 161) and (m.info()["n_features"], m.info()["n_frames"]) == (60, 161)
    assert m.missing().shape == x.shape
    assert p.read(row(""), hs) is None


def test_crop_and_pad_to_duration(hs: Path) -> None:
    p = proc(duration=1.0)
    wave = np.arange(12000, dtype=np.float32)
    assert np.array_equal(p.fix_length(wave), wave[2000:10000])  # centre crop
    short = np.ones(3000, dtype=np.float32)
    padded = p.fix_length(short)
    assert len(padded) == 8000 and padded[:3000].all() and not padded[3000:].any()
    assert proc(duration=1.0, pad="repeat").fix_length(short).all()


def test_fit_on_train_only_and_state_roundtrip(
    hs: Path, labels: pd.DataFrame, tmp_path: Path
) -> None:
    files = labels["file"].tolist()
    train, other = files[0:1000:50], files[25:1000:50]
    p = proc()
    p.fit([p.read(row(f), hs) for f in train] + [None])
    z = np.concatenate([p.transform(p.read(row(f), hs))[0].numpy() for f in train], axis=1)
    np.testing.assert_allclose(z.mean(axis=1), 0, atol=1e-3)
    np.testing.assert_allclose(z.std(axis=1), 1, atol=1e-3)
    q = proc().fit([p.read(row(f), hs) for f in other])
    assert not np.allclose(p.mean_, q.mean_)  # the statistics come from the raws given

    torch.save(p.state_dict(), tmp_path / "state.pt")
    fresh = proc().load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert fresh.is_fitted and not proc().is_fitted
    raw = p.read(row(files[500]), hs)
    assert torch.equal(fresh.transform(raw), p.transform(raw))
    with pytest.raises(CheckpointError):
        proc(n_mels=32).load_state_dict(p.state_dict())


def test_gain_is_an_exact_offset(hs: Path) -> None:
    """+6 dB of gain adds 6 to every log-mel bin and 6*sqrt(n_mels) to MFCC c0 only."""
    wave, _ = read_audio(hs / CLIP)
    for p in (proc(), proc(features="mfcc", deltas=1)):
        w = p.fix_length(wave)
        diff = p.featurize(w * 10 ** (6 / 20)) - p.featurize(w)
        np.testing.assert_allclose(
            diff, np.broadcast_to(6 * p._gain[:, None], diff.shape), atol=2e-3
        )


def test_specaugment_only_in_augment_and_reproducible(hs: Path) -> None:
    opts = {"time_mask": 30, "freq_mask": 12, "n_masks": 2, "gain_db": 3, "shift": 10}
    p = proc(augment=opts)
    raw = p.read(row(CLIP), hs)
    p.fit([raw])
    x = p.transform(raw)
    assert torch.equal(p.transform(raw), x)  # transform itself is deterministic
    before = x.clone()
    a = p.augment(x, torch.Generator().manual_seed(7))
    b = p.augment(x, torch.Generator().manual_seed(7))
    c = p.augment(x, torch.Generator().manual_seed(8))
    assert torch.equal(x, before)  # the (cached) input is not modified in place
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x)
    masks = proc(augment={"time_mask": 30, "freq_mask": 12}).fit([raw])
    m = masks.augment(x, torch.Generator().manual_seed(1))
    changed = m != x
    assert changed.any() and bool((m[changed] == 0).all())  # masked bins set to the mean
    assert proc().augment(x) is x  # no augment options: identity


def test_bad_options_raise_configerror() -> None:
    for opts in ({"features": "cqt"}, {"deltas": 3}, {"fmax": 9000}, {"augment": {"mixup": 1}}):
        with pytest.raises(ConfigError):
            proc(**opts)


# -- encoder -------------------------------------------------------------------------------
def test_audio_cnn_shapes_and_gradients(hs: Path) -> None:
    assert DEFAULT_ENCODER["audio"] == "audio_cnn"
    for p in (proc(), proc(features="mfcc", n_mfcc=13, duration=0.5)):
        info = p.info()
        enc = create_encoder("audio_cnn", "audio", info)
        assert enc.out_dim == 256
        x = torch.randn(4, 1, info["n_features"], info["n_frames"], requires_grad=True)
        out = enc(x)
        assert out.shape == (4, 256)
        out.pow(2).mean().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
        for name, param in enc.named_parameters():
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
    enc = create_encoder("audio_cnn", "audio", proc().info(), proj_dim=64, channels=[8, 16])
    assert enc.out_dim == 64 and enc(torch.randn(2, 1, 64, 188)).shape == (2, 64)


def test_pcm16_is_scaled_to_full_scale(hs: Path) -> None:
    """The data set is 16-bit PCM: the reader scales it to [-1, 1) full scale."""
    buf = io.BytesIO((hs / CLIP).read_bytes())
    ints, _ = sf.read(buf, dtype="int16")
    wave, _ = read_audio(hs / CLIP)
    np.testing.assert_array_equal(wave, ints.astype(np.float32) / 32768)
