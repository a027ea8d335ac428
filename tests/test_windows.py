"""Random-crop training windows and sliding-window test-time aggregation (signal and audio), the
single training-set scaler, and the xresnet1d / inception1d encoders: mechanics on small
SYNTHETIC signals (the PTB-XL results are in benchmarks/results/ptbxl.md)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from medmodal import api
from medmodal.data.preprocess.audio import AudioProcessor
from medmodal.data.preprocess.signal import SignalArray, SignalProcessor
from medmodal.data.preprocess.windows import head_crop, random_crop
from medmodal.data.schema import ModalitySpec
from medmodal.errors import ConfigError
from medmodal.models import build_model
from medmodal.models.encoders import create_encoder, encoder_capabilities
from medmodal.models.windows import WindowSpec, encode_windows, split_windows, window_starts
from medmodal.predictor import Predictor

FS, LEADS, SAMPLES = 100, 2, 400


def signal_proc(**opts: Any) -> SignalProcessor:
    return SignalProcessor("ecg", ModalitySpec(type="signal", column="ref", preprocess=opts))


def audio_proc(**opts: Any) -> AudioProcessor:
    return AudioProcessor("pcg", ModalitySpec(type="audio", column="wav", preprocess=opts))


# -- geometry ----------------------------------------------------------------------------------
def test_window_starts_cover_every_step() -> None:
    assert window_starts(1000, 250, 125) == [0, 125, 250, 375, 500, 625, 750]
    assert window_starts(1000, 300, 150) == [0, 150, 300, 450, 600, 700]  # last one at the end
    assert window_starts(200, 250, 125) == [0]
    for total, length, hop in [(1000, 250, 125), (999, 250, 100), (401, 100, 100)]:
        covered = np.zeros(total, bool)
        for s in window_starts(total, length, hop):
            assert 0 <= s and s + length <= total
            covered[s : s + length] = True
        assert covered.all()


def test_split_windows_keeps_each_rows_windows_together() -> None:
    x = torch.arange(2 * 3 * 10, dtype=torch.float32).reshape(2, 3, 10)
    w, n = split_windows(x, WindowSpec(4, 2))
    assert n == 4 and w.shape == (8, 3, 4)
    assert torch.equal(w[5], x[1, :, 2:6]) and torch.equal(w[3], x[0, :, 6:10])


def test_windowed_mean_equals_the_mean_of_per_window_logits() -> None:
    """mean aggregation + a linear head = the mean of the logits of each window; max takes each
    feature's maximum; an input of one window's length is encoded as it is."""
    torch.manual_seed(0)
    info = {"in_channels": LEADS, "length": SAMPLES, "windows": {"length": 100, "hop": 50}}
    spec = {"encoders": {"ecg": {"name": "cnn1d", "channels": [4, 8], "dropout": 0.0}}}
    model = build_model({"ecg": "signal"}, {"ecg": info}, spec, task="multilabel", n_outputs=3)
    model.eval()
    x = torch.randn(5, LEADS, SAMPLES)
    starts = window_starts(SAMPLES, 100, 50)
    with torch.no_grad():
        per_window = torch.stack([model(x[..., s : s + 100]) for s in starts])
        assert torch.allclose(model(x), per_window.mean(0), atol=1e-5)
        assert torch.equal(model(x[..., :100]), per_window[0])
        enc = model.encoders["ecg"]
        z = torch.stack([enc(x[..., s : s + 100]) for s in starts]).amax(0)
        assert torch.allclose(encode_windows(enc, x, WindowSpec(100, 50, "max")), z, atol=1e-6)
    plain = build_model(
        {"ecg": "signal"}, {"ecg": {**info, "windows": None}}, spec, task="binary", n_outputs=1
    )
    assert plain.windows == {}


# -- crops in the processors -------------------------------------------------------------------
def test_signal_crop_is_random_seeded_and_only_in_training() -> None:
    p = signal_proc(crop=100, windows={"aggregate": "max"}, standardize="none")
    x = torch.arange(SAMPLES, dtype=torch.float32).repeat(LEADS, 1)
    a = p.train_input(x, True, torch.Generator().manual_seed(3))
    b = p.train_input(x, True, torch.Generator().manual_seed(3))
    assert a.shape == (LEADS, 100) and torch.equal(a, b)
    assert torch.equal(a[0], torch.arange(int(a[0, 0]), int(a[0, 0]) + 100, dtype=torch.float32))
    starts = {
        int(p.train_input(x, True, torch.Generator().manual_seed(s))[0, 0]) for s in range(20)
    }
    assert len(starts) > 10 and min(starts) >= 0 and max(starts) <= SAMPLES - 100
    absent = p.train_input(torch.zeros(LEADS, SAMPLES), False, None)
    assert absent.shape == (LEADS, 100)  # an absent row stacks with the crops
    assert p.info()["windows"] == {"length": 100, "hop": 50, "aggregate": "max"}
    assert "windows" not in signal_proc().info()


def test_audio_crop_and_windows_on_frames() -> None:
    p = audio_proc(duration=2.0, crop=40, windows={"hop": 10})
    info = p.info()
    assert info["n_frames"] == 40 and info["windows"] == {
        "length": 40,
        "hop": 10,
        "aggregate": "mean",
    }
    x = torch.randn(1, p.n_features, p.n_frames)
    cut = p.train_input(x, True, torch.Generator().manual_seed(0))
    assert cut.shape == (1, p.n_features, 40)
    assert p.train_input(x, False, None).shape == (1, p.n_features, 40)
    assert audio_proc(duration=2.0).info()["n_frames"] == p.n_frames


def test_crop_helpers_leave_short_inputs_alone() -> None:
    x = torch.randn(2, 50)
    assert random_crop(x, 80, None) is x and head_crop(x, 80) is x and head_crop(x, None) is x


@pytest.mark.parametrize(
    "opts",
    [{"windows": {}}, {"crop": 100, "windows": {"length": 50, "hop": 60}}, {"crop": 0}],
)
def test_window_options_are_checked(opts: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        signal_proc(**opts)


def test_global_standardisation_is_one_scaler_over_every_lead() -> None:
    rng = np.random.default_rng(0)
    raws = [SignalArray(rng.normal([[1.0], [5.0]], [[1.0], [3.0]], (2, 200)), FS) for _ in range(8)]
    p = signal_proc(standardize="global").fit(raws)
    pooled = np.stack(raws).astype(np.float64)
    assert p.mean_ == pytest.approx([pooled.mean()] * 2, rel=1e-6)
    assert p.std_ == pytest.approx([pooled.std()] * 2, rel=1e-6)
    per_lead = signal_proc(standardize="fit").fit(raws)
    assert per_lead.mean_[0] != pytest.approx(per_lead.mean_[1])
    t = p.transform(raws[0])
    assert torch.allclose(
        t, (torch.from_numpy(np.asarray(raws[0])) - pooled.mean()) / pooled.std(), atol=1e-4
    )


def test_checkpoints_without_crop_options_still_load() -> None:
    """Crops and windows do not shape the fitted state, so a state saved before they existed
    (or with other values) loads."""
    rng = np.random.default_rng(1)
    raws = [SignalArray(rng.normal(size=(2, 200)), FS) for _ in range(4)]
    state = signal_proc(standardize="fit").fit(raws).state_dict()
    q = signal_proc(standardize="fit", crop=50, windows={}).load_state_dict(state)
    assert q.is_fitted and q.mean_ == state["mean_"]


# -- encoders ----------------------------------------------------------------------------------
SMALL = {
    "xresnet1d": {"layers": [1, 1], "widths": [8, 16], "stem": [8, 8], "kernel_size": 3},
    "inception1d": {"depth": 3, "filters": 4, "bottleneck": 4, "kernel_size": 8},
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_new_signal_encoders_shapes_gradients_and_cam_layer(name: str) -> None:
    enc = create_encoder(name, "signal", {"in_channels": 3}, **SMALL[name])
    x = torch.randn(4, 3, 137, requires_grad=True)
    z = enc(x)
    assert z.shape == (4, enc.out_dim)
    z.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    layer = encoder_capabilities(name).cam_layer(enc)
    seen: dict[str, torch.Tensor] = {}
    layer.register_forward_hook(lambda _m, _i, out: seen.setdefault("a", out))
    enc(x)
    assert seen["a"].dim() == 3 and seen["a"].shape[0] == 4  # (B, K, time) for Grad-CAM
    assert encoder_capabilities(name).onnx


def test_xresnet_depths_are_the_published_layer_counts() -> None:
    def blocks(depth: int) -> int:
        enc = create_encoder("xresnet1d", "signal", {"in_channels": 12}, depth=depth)
        return len(enc.stages)

    assert [blocks(d) for d in (18, 34, 50, 101)] == [8, 16, 16, 33]
    with pytest.raises(ConfigError, match="depth"):
        create_encoder("xresnet1d", "signal", {"in_channels": 12}, depth=77)


# -- end to end: train with crops, predict / export / explain with windows ---------------------
def synthetic_signals(root: Path, n: int = 48) -> Path:
    """``n`` two-lead records, 4 s at 100 Hz: class 1 carries a 7 Hz burst somewhere in
    the record (so a crop may miss it and the windows must find it)."""
    rng = np.random.default_rng(0)
    rows = []
    t = np.arange(SAMPLES) / FS
    for i in range(n):
        y = i % 2
        x = 0.3 * rng.normal(size=(LEADS, SAMPLES))
        if y:
            s = int(rng.integers(0, SAMPLES - 100))
            x[:, s : s + 100] += np.sin(2 * math.pi * 7 * t[:100])
        np.save(root / f"r{i}.npy", x.astype(np.float32))
        split = "train" if i < 32 else ("val" if i < 40 else "test")
        rows.append({"sample_id": f"r{i}", "ecg": f"r{i}.npy", "label": "pos" if y else "neg",
                     "split": split})  # fmt: skip
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def signal_config(root: Path, encoder: dict[str, Any], **train: Any) -> dict[str, Any]:
    schema = {
        "id_column": "sample_id", "split_column": "split",
        "target": {"task": "binary", "column": "label", "classes": ["neg", "pos"]},
        "modalities": {"ecg": {"type": "signal", "column": "ecg", "preprocess": {
            "fs": FS, "standardize": "global", "crop": 100, "windows": {}}}},
    }  # fmt: skip
    return {
        "name": "win", "seed": 0, "output_dir": str(root / "run"),
        "data": {"manifest": str(synthetic_signals(root)), "schema": schema},
        "model": {"encoders": {"ecg": encoder}},
        "train": {"epochs": 2, "batch_size": 8, "lr": 0.01, "optimizer": "adamw",
                  "scheduler": "onecycle", "threads": 1, **train},
        "evaluate": {"bootstrap": 0, "report": False},
    }  # fmt: skip


@pytest.mark.parametrize(
    "encoder",
    [{"name": "resnet1d", "widths": [4, 8], "blocks": [1, 1]}, {"name": "xresnet1d", **SMALL["xresnet1d"]},
     pytest.param({"name": "inception1d", **SMALL["inception1d"]}, marks=pytest.mark.slow)],
    ids=lambda e: e["name"],
)  # fmt: skip
def test_crops_train_and_windows_predict_export_and_explain(tmp_path: Path, encoder: dict) -> None:
    from medmodal.explain.forward import ModelScore, item_of
    from medmodal.explain.gradcam import GradCAM
    from medmodal.export.onnx import export_onnx, onnx_session, parity

    run = api.fit(signal_config(tmp_path, encoder), progress=False)
    p = Predictor.load(run.checkpoint)
    assert p.model.windows["ecg"] == WindowSpec(100, 50, "mean")
    ds = p.dataset(pd.read_csv(tmp_path / "manifest.csv").tail(8), tmp_path, None)
    x = ds[0]["ecg"]
    assert x.shape == (LEADS, SAMPLES)  # prediction sees the whole record
    batch = torch.stack([ds[i]["ecg"] for i in range(3)])
    windows = torch.stack([batch[..., s : s + 100] for s in window_starts(SAMPLES, 100, 50)], 1)
    with torch.no_grad():
        enc = p.model.encoders["ecg"]
        manual = enc(windows.reshape(-1, LEADS, 100)).reshape(3, -1, enc.out_dim).mean(1)
        assert torch.allclose(p.model.encode("ecg", batch), manual, atol=1e-5)
    onnx = export_onnx(p, tmp_path / "m.onnx")
    samples = [ds[i] for i in range(len(ds))]
    assert parity(p, onnx_session(onnx), samples) <= 1e-4
    item = item_of(ds, 0)
    score = ModelScore(p.model, item, "ecg", "binary", 1)
    assert torch.allclose(score(item.inputs["ecg"]), p.model(item.inputs, item.present)[:, 0])
    layer = encoder_capabilities(encoder["name"]).cam_layer(p.model.encoders["ecg"])
    cam = GradCAM(p, "ecg", layer).explain(item, 1)
    assert cam.values.shape == (LEADS, SAMPLES) and np.isfinite(cam.values).all()
    assert 0 <= cam.values.min() and cam.values.max() <= 1
