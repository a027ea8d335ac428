"""Biosignals: WFDB / .npy / .csv reader, segments, annotations, processor, 1D encoders."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import data_set

import medmodal.data.preprocess.signal as signal_module
from medmodal.data.preprocess.base import PROCESSORS
from medmodal.data.preprocess.signal import SignalArray, SignalProcessor
from medmodal.data.readers import Blob
from medmodal.data.readers.signal import (
    SIGNAL_FORMATS,
    load_record,
    locate,
    read_annotations,
    read_signal,
)
from medmodal.data.schema import ModalitySpec
from medmodal.errors import CheckpointError, ConfigError, DataError
from medmodal.models.encoders import DEFAULT_ENCODER, create_encoder


@pytest.fixture(scope="module")
def ptbxl(data_dir: Path) -> Path:
    return data_set(data_dir, "ptbxl/records100", "00000/00001_lr.hea")


def proc(**opts: object) -> SignalProcessor:
    return SignalProcessor("ecg", ModalitySpec(type="signal", column="ref", preprocess=opts))


def row(ref: str | Path) -> dict[str, str]:
    return {"ref": str(ref)}


# -- reader --------------------------------------------------------------------------------
def test_mitdb_record_100(mitdb: Path) -> None:
    for ref in (mitdb / "100", mitdb / "100.hea", mitdb / "100.dat"):
        x, fs, names = read_signal(ref)
        assert x.shape == (2, 650000) and x.dtype == np.float32
        assert fs == 360 and names == ["MLII", "V5"]
    assert 0.5 < float(np.percentile(x[0], 99.9) - np.percentile(x[0], 0.1)) < 5  # mV, QRS-sized


def test_lead_selection_and_fallback(mitdb: Path) -> None:
    full114, _, names114 = read_signal(mitdb / "114")
    assert names114 == ["V5", "MLII"]
    x, _, names = read_signal(mitdb / "114", ["mlii"])
    assert names == ["MLII"] and np.array_equal(x[0], full114[1])
    with pytest.raises(DataError) as exc:
        read_signal(mitdb / "102", ["MLII"])
    assert "'V5', 'V2'" in exc.value.reason and exc.value.path == str(mitdb / "102")
    full102, _, _ = read_signal(mitdb / "102")
    x, _, names = read_signal(mitdb / "102", ["MLII", "V5"], lead_fallback=True)
    assert names == ["V5"] and np.array_equal(x[0], full102[0])
    x, _, names = read_signal(mitdb / "100", ["MLII", "V5"], lead_fallback=True)
    assert names == ["MLII"]
    _, _, names = read_signal(mitdb / "102", [["MLII", "V5"], 1])  # per-channel priority groups
    assert names == ["V5", "V2"]
    with pytest.raises(DataError):
        read_signal(mitdb / "100", [5])


def test_segment_equals_slice_and_record_is_cached(mitdb: Path) -> None:
    full, _, _ = read_signal(mitdb / "100")
    win, fs, _ = read_signal(f"{mitdb / '100'}#1000:1360")
    assert fs == 360 and np.array_equal(win, full[:, 1000:1360])
    assert np.array_equal(read_signal(f"{mitdb / '100'}#:360")[0], full[:, :360])
    assert read_signal(f"{mitdb / '100'}#649000:")[0].shape == (2, 1000)
    assert load_record(mitdb / "100") is load_record(mitdb / "100.hea")  # decoded once
    assert not load_record(mitdb / "100").signal.flags.writeable
    assert not np.shares_memory(win, load_record(mitdb / "100").signal)
    for bad in ("#0:650001", "#500:500", "#700:600"):
        with pytest.raises(DataError, match="out of bounds"):
            read_signal(f"{mitdb / '100'}{bad}")


def test_ptbxl_12_leads(ptbxl: Path) -> None:
    x, fs, names = read_signal(ptbxl / "00000" / "00001_lr")
    assert x.shape == (12, 1000) and fs == 100
    assert names[:3] == ["I", "II", "III"] and names[-1] == "V6"
    # Einthoven: III = II - I (up to the 1 uV quantisation)
    np.testing.assert_allclose(x[2], x[1] - x[0], atol=0.005)


def test_truncated_and_missing_wfdb_files(mitdb: Path, tmp_path: Path) -> None:
    for ext in ("hea", "atr"):
        shutil.copy(mitdb / f"100.{ext}", tmp_path / f"100.{ext}")
    (tmp_path / "100.dat").write_bytes((mitdb / "100.dat").read_bytes()[:1000])
    with pytest.raises(DataError, match="truncated") as exc:
        read_signal(tmp_path / "100")
    assert exc.value.path == str(tmp_path / "100.dat")
    with pytest.raises(DataError, match="truncated"):
        proc().read(row(f"{tmp_path / '100'}#0:300"), None)  # even a window inside the bytes
    (tmp_path / "100.dat").unlink()
    with pytest.raises(DataError, match=r"\.dat\) not found"):
        read_signal(tmp_path / "100")
    (tmp_path / "100.hea").unlink()
    with pytest.raises(DataError, match=r"\.hea\) not found") as exc:
        read_signal(tmp_path / "100")
    assert exc.value.path == str(tmp_path / "100.hea")


def test_npy_csv_and_nan(mitdb: Path, tmp_path: Path) -> None:
    x, _, _ = read_signal(f"{mitdb / '100'}#0:720")
    np.save(tmp_path / "tc.npy", x.T)  # (T, C) is transposed to (C, T)
    y, fs, names = read_signal(tmp_path / "tc.npy", fs=360, lead_names=["MLII", "V5"])
    assert np.array_equal(y, x) and fs == 360 and names == ["MLII", "V5"]
    with pytest.raises(ConfigError, match="input_fs"):
        read_signal(tmp_path / "tc.npy")
    (tmp_path / "ecg.csv").write_text("MLII,V5\n" + "\n".join(f"{a},{b}" for a, b in x.T[:100]))
    z, _, names = read_signal(tmp_path / "ecg.csv", ["V5"], fs=360)
    assert names == ["V5"] and np.allclose(z[0], x[1, :100], atol=1e-6)
    x[1, 50] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(DataError, match=r"NaN.*'1'"):
        read_signal(tmp_path / "nan.npy", fs=360)
    assert read_signal(f"{tmp_path / 'nan.npy'}#100:200", fs=360)[0].shape == (2, 100)


def test_signal_formats_by_suffix_then_content(mitdb: Path, tmp_path: Path) -> None:
    assert SIGNAL_FORMATS.ordered() == ["npy", "wfdb", "csv"]  # declared priorities
    x, _, _ = read_signal(f"{mitdb / '100'}#0:720")
    np.save(tmp_path / "a.npy", x)
    (tmp_path / "a.npy").rename(tmp_path / "ecg.bin")  # .npy content, a suffix no format claims
    (tmp_path / "ecg.txt").write_text("MLII,V5\n" + "\n".join(f"{a},{b}" for a, b in x.T))
    shutil.copy(mitdb / "100.hea", tmp_path / "header.txt")
    assert locate(tmp_path / "ecg.bin") == ("npy", tmp_path / "ecg.bin")
    assert locate(tmp_path / "ecg.txt") == ("csv", tmp_path / "ecg.txt")
    assert locate(mitdb / "100") == ("wfdb", mitdb / "100.hea")  # no file: a record name
    assert locate(mitdb / "100.dat") == ("wfdb", mitdb / "100.hea")  # a claimed suffix
    sniffs = {n: SIGNAL_FORMATS.capabilities(n).sniff for n in SIGNAL_FORMATS.ordered()}
    hea = (mitdb / "100.hea").read_bytes()
    assert sniffs["wfdb"](hea) and sniffs["csv"](hea)  # text: the WFDB record line decides
    assert not sniffs["wfdb"](b"MLII,V5\n1,2\n") and not sniffs["wfdb"](b"# comment only\n")
    assert np.array_equal(read_signal(tmp_path / "ecg.bin", fs=360)[0], x)
    assert np.allclose(read_signal(tmp_path / "ecg.txt", fs=360)[0], x, atol=1e-6)
    with pytest.raises(DataError, match=r"WFDB header \(.hea\) not found"):
        read_signal(tmp_path / "header.txt")  # a WFDB header is not read as CSV
    (tmp_path / "noise.bin").write_bytes(b"\x00\x01" * 300)  # nothing sniffs: a record name
    with pytest.raises(DataError, match=r"WFDB header \(.hea\) not found"):
        read_signal(tmp_path / "noise.bin")


def test_signal_uploads_by_content(mitdb: Path) -> None:
    hea = (mitdb / "100.hea").read_bytes()
    with pytest.raises(DataError, match="a WFDB header by its content.*upload the signal as"):
        load_record(Blob(hea, "ecg"), fs=360)
    with pytest.raises(DataError, match="not a .npy array or CSV text by its content"):
        load_record(Blob(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 10, "ecg"), fs=360)
    rec = load_record(Blob(b"MLII,V5\n1,2\n3,4\n5,6\n", "ecg"), fs=360)
    assert rec.names == ["MLII", "V5"] and rec.signal.shape == (2, 3)


def test_the_processor_takes_the_signal_array_read_returns(mitdb: Path) -> None:
    import pickle

    p = proc(leads=["MLII"], standardize="fit")
    raw = p.read(row(f"{mitdb / '100'}#0:720"), None)
    assert isinstance(raw, SignalArray) and raw.fs == 360.0
    again = pickle.loads(pickle.dumps(raw))  # worker processes get the rate too
    assert isinstance(again, SignalArray) and again.fs == 360.0 and np.array_equal(again, raw)
    p.fit([again, None])
    assert p.fs_ == 360.0 and torch.equal(p.transform(again), p.transform(raw))
    with pytest.raises(TypeError, match="SignalArray"):
        p.transform(np.asarray(raw))
    with pytest.raises(DataError, match="sampled at 250 Hz"):
        p.transform(SignalArray(np.asarray(raw), 250.0))


def test_annotations(mitdb: Path, tmp_path: Path) -> None:
    ann = read_annotations(mitdb / "100")
    assert len(ann.sample) == 2274 and ann.symbol[0] == "+" and ann.symbol.count("V") == 1
    assert np.all(np.diff(ann.sample) >= 0)
    assert len(read_annotations(mitdb / "100.hea").sample) == 2274
    shutil.copy(mitdb / "100.hea", tmp_path / "100.hea")
    with pytest.raises(DataError, match="annotation file not found") as exc:
        read_annotations(tmp_path / "100")
    assert exc.value.path == str(tmp_path / "100.atr")
    (tmp_path / "100.atr").write_bytes(b"\x00\x01garbage" * 3)
    with pytest.raises(DataError, match="corrupt"):
        read_annotations(tmp_path / "100")


# -- processor -----------------------------------------------------------------------------
def test_processor_registered_fallback_and_info(
    mitdb: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = ModalitySpec(
        type="signal", column="ref", preprocess={"leads": ["MLII", "V5"], "lead_fallback": True}
    )
    p = PROCESSORS.get("signal")(name="ecg", spec=spec)
    assert isinstance(p, SignalProcessor)
    raws = [p.read(row(f"{r}#1000:1360"), mitdb) for r in ("100", "102", "114")]
    assert all(r.shape == (1, 360) for r in raws)
    p.fit(raws + [None])
    assert p.info() == {"in_channels": 1, "length": 360, "fs": 360.0}
    assert p.missing().shape == (1, 360) and p.read(row(""), mitdb) is None
    strict = proc(leads=["MLII"])
    decoded = []
    load = signal_module.load_record
    monkeypatch.setattr(
        signal_module, "load_record", lambda *a, **k: decoded.append(a) or load(*a, **k)
    )
    for start in range(0, 360 * 300, 360):  # the failure is cached per record: no re-decoding
        with pytest.raises(DataError, match="'V5', 'V2'"):
            strict.read(row(f"102#{start}:{start + 360}"), mitdb)
    assert len(decoded) <= 1, len(decoded)  # 0 when an earlier test already cached the failure


def test_bandpass_removes_baseline_drift_and_keeps_qrs(mitdb: Path, tmp_path: Path) -> None:
    fs = 360
    clean, _, _ = read_signal(f"{mitdb / '100'}#0:{60 * fs}", ["MLII"])
    t = np.arange(clean.shape[1]) / fs
    drift = 1.0 * np.sin(2 * np.pi * 0.1 * t)  # 1 mV, 0.1 Hz baseline wander
    np.save(tmp_path / "drift.npy", (clean + drift).astype(np.float32))
    opts = {"bandpass": [0.5, 40], "standardize": "none", "input_fs": fs}
    out = proc(**opts).read(row(tmp_path / "drift.npy"), None)[0]
    ref = proc(**opts).read(row(f"{mitdb / '100'}#0:{60 * fs}"), None)  # clean, filtered
    assert ref.shape == (2, 60 * fs)

    def band_energy(x: np.ndarray, lo: float, hi: float) -> float:
        f = np.fft.rfftfreq(len(x), 1 / fs)
        return float((np.abs(np.fft.rfft(x)) ** 2)[(f >= lo) & (f < hi)].sum())

    raw_drift = band_energy(clean[0] + drift, 0.05, 0.2)
    assert band_energy(out, 0.05, 0.2) < 1e-3 * raw_drift  # drift gone
    ratio = band_energy(out, 5, 25) / band_energy(clean[0], 5, 25)
    assert 0.9 < ratio < 1.1  # QRS band kept
    np.testing.assert_allclose(out[fs:-fs], ref[0, fs:-fs], atol=0.02)  # same as the clean ECG
    qrs = np.ptp(out[fs:-fs])
    assert 0.8 * np.ptp(clean[0] - clean[0].mean()) < qrs  # R waves keep their height


def test_segment_cut_from_whole_filtered_record(mitdb: Path) -> None:
    opts = {"leads": ["MLII"], "bandpass": [0.5, 40], "fs": 250, "standardize": "none"}
    whole = proc(**opts).read(row("100"), mitdb)
    assert whole.shape == (1, 451389)  # ceil(650000 * 250 / 360)
    win = proc(**opts).read(row("100#3600:7200"), mitdb)
    assert win.shape == (1, 2500)
    assert np.array_equal(win, whole[:, 2500:5000])  # no edge artefacts at the cut


def test_resample_and_length_policy(mitdb: Path, ptbxl: Path) -> None:
    assert proc(fs=250).read(row("100#0:3600"), mitdb).shape == (2, 2500)
    assert proc(fs=500).read(row("00000/00001_lr"), ptbxl).shape == (12, 5000)
    p = proc(fs=250, length=2000, length_policy="error")
    with pytest.raises(DataError) as exc:
        p.read(row("100#0:3600"), mitdb)
    assert "2500" in exc.value.reason and "2000" in exc.value.reason
    assert exc.value.path == str(mitdb / "100")
    x = proc(fs=250, length=2000).read(row("100#0:3600"), mitdb)
    y = proc(fs=250).read(row("100#0:3600"), mitdb)
    assert x.shape == (2, 2000) and np.array_equal(x, y[:, 250:2250])  # centre crop
    assert proc(length=400).read(row("100#0:360"), mitdb).shape == (2, 400)
    with pytest.raises(ConfigError):
        proc(length_policy="error")


def test_standardisation_fit_and_state_roundtrip(mitdb: Path, tmp_path: Path) -> None:
    p = proc(leads=["MLII"], standardize="fit", bandpass=[0.5, 40])
    raws = [p.read(row(f"100#{s}:{s + 720}"), mitdb) for s in range(0, 72000, 720)]
    p.fit(raws)
    z = torch.cat([p.transform(r) for r in raws], dim=1)
    assert abs(float(z.mean())) < 1e-3 and abs(float(z.std()) - 1) < 1e-3
    rec = proc(leads=["MLII"]).read(row("100#0:720"), mitdb)[0]
    assert abs(rec.mean()) < 1e-5 and abs(rec.std() - 1) < 1e-3  # default: per-record z-score
    torch.save(p.state_dict(), tmp_path / "s.pt")
    q = proc(leads=["MLII"], standardize="fit", bandpass=[0.5, 40])
    assert not q.is_fitted
    q.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert q.is_fitted and q.info() == p.info()
    assert torch.equal(q.transform(raws[3]), p.transform(raws[3]))
    with pytest.raises(CheckpointError):
        proc(leads=["MLII", "V5"]).load_state_dict(p.state_dict())


def test_source_standardisation_keeps_a_patients_relative_amplitudes(mitdb: Path) -> None:
    """standardize: source scales a segment by its whole record's per-lead mean / std: the
    segments of one record keep their amplitudes relative to each other (a per-segment z-score
    makes each std 1); a whole record is z-scored as with ``record``."""
    opts = {"leads": ["MLII"], "bandpass": [0.5, 40]}
    whole = proc(**opts, standardize="none").read(row("100"), mitdb)[0].astype(np.float64)
    mean, std = whole.mean(), whole.std()
    p = proc(**opts, standardize="source")
    for ref, (s, e) in (("100#1000:1252", (1000, 1252)), ("100#90000:90252", (90000, 90252))):
        win = p.read(row(ref), mitdb)[0]
        np.testing.assert_allclose(win, (whole[s:e] - mean) / std, atol=1e-4)
        assert abs(win.std() - 1) > 0.05  # not a per-segment z-score
    z = p.read(row("100"), mitdb)[0]
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-3


def test_reference_column_is_stacked_as_extra_channels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "sig.npy", rng.normal(size=(2, 300)).astype(np.float32))
    np.save(tmp_path / "ref.npy", np.arange(280, dtype=np.float32))  # 1-D, 20 short: padded
    spec = ModalitySpec(type="signal", column="ref_sig", preprocess={
        "input_fs": 100, "length": 300, "reference_column": "tmpl", "standardize": "none"})  # fmt: skip
    p = SignalProcessor("ecg", spec)
    x = p.read({"ref_sig": "sig.npy", "tmpl": "ref.npy"}, tmp_path)
    assert x.shape == (3, 300) and x.fs == 100
    assert np.array_equal(x[2, 10:290], np.arange(280)) and x[2, :10].sum() == 0
    p.fit([x])
    assert p.n_channels_ == 3 and p.info()["in_channels"] == 3
    np.save(tmp_path / "bad.npy", np.array([1.0, np.nan]))
    for bad in ({"tmpl": "bad.npy"}, {"tmpl": "nope.npy"}, {}):
        with pytest.raises(DataError):
            p.read({"ref_sig": "sig.npy", **bad}, tmp_path)


def test_augment_reproducible_and_not_in_place(mitdb: Path) -> None:
    p = proc(augment={"scale": 0.2, "noise": 0.05, "shift": 20, "wander": 0.2})
    raw = p.read(row("100#0:720"), mitdb)
    p.fit([raw])
    x = p.transform(raw)
    before = x.clone()
    a = p.augment(x, torch.Generator().manual_seed(3))
    b = p.augment(x, torch.Generator().manual_seed(3))
    c = p.augment(x, torch.Generator().manual_seed(4))
    assert torch.equal(x, before) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and not torch.equal(a, x)
    assert proc().augment(x) is x
    with pytest.raises(ConfigError):
        proc(augment={"flip": 1})


# -- encoders ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet1d", "cnn1d"])
def test_signal_encoders_shapes_and_gradients(name: str) -> None:
    assert DEFAULT_ENCODER["signal"] == "resnet1d"
    for c, length in ((1, 360), (12, 1000), (2, 17)):
        enc = create_encoder(name, "signal", {"in_channels": c, "length": length, "fs": 360})
        assert enc.out_dim == 256
        x = torch.randn(3, c, length, requires_grad=True)
        out = enc(x)
        assert out.shape == (3, 256)
        out.pow(2).mean().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
        for pname, param in enc.named_parameters():
            assert param.grad is not None and torch.isfinite(param.grad).all(), pname
    small = create_encoder(name, "signal", {"in_channels": 2}, proj_dim=32)
    assert small.out_dim == 32 and small(torch.randn(2, 2, 100)).shape == (2, 32)
