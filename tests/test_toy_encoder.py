"""An encoder is one file: this module defines and registers a small 2D conv encoder with its
capabilities (a Grad-CAM layer, a masked-image path, ONNX export), and on real BreastMNIST images
it trains, explains with Grad-CAM, pretrains and exports with parity. An encoder registered
without those capabilities is refused by each, naming the encoders that have them.

Both encoders are registered by a module fixture and unregistered after it, so no other test's
registry listing sees them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from medmodal import api
from medmodal.config import ExperimentConfig
from medmodal.data.manifest import LabelMap
from medmodal.data.schema import Schema
from medmodal.errors import ConfigError
from medmodal.explain import create_explainer, item_of, plan
from medmodal.explain.forward import ModelScore
from medmodal.explain.gradcam import grad_cam
from medmodal.export.onnx import export_onnx
from medmodal.models.encoders import ENCODERS
from medmodal.models.encoders.base import (
    EncoderCapabilities,
    MaskedPath,
    MaskedSpec,
    encoders_offering,
    register_encoder,
    unregister_encoder,
)
from medmodal.models.encoders.masked.pixels import to_pixels
from medmodal.predictor import Predictor, make_processors, model_for
from medmodal.pretrain import load_pretrain_config, masked_paths


# -- the one file an encoder needs ---------------------------------------------------------------
class ToyConv(nn.Module):
    """Two 3x3 conv + ReLU layers at full resolution, global average pooling."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
        )
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


class ToyMasked(nn.Module):
    """Hidden pixels are zeroed before the encoder (they never reach it); a 1x1 convolution of the
    encoder's feature map predicts every pixel."""

    def __init__(self, encoder: nn.Module, spec: MaskedSpec) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Conv2d(encoder.out_dim, spec.channels, 1)

    @property
    def model_patch(self) -> int:
        return 1

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = to_pixels(mask, 1).to(x.dtype)
        return self.head(self.encoder.features(x * (1 - hidden)))

    def hidden_pixels(self, mask: torch.Tensor) -> torch.Tensor:
        return to_pixels(mask, 1)


TOY_CAPS = EncoderCapabilities(
    cam_layer=lambda m: m.features[-1],
    masked_path=MaskedPath(ToyMasked, "toy: hidden pixels zeroed, 1x1 conv decoder"),
)
BARE_CAPS = EncoderCapabilities(onnx=False, notes={"onnx": "the toy says no"})


def toy_conv(info: dict[str, Any], width: int = 8) -> nn.Module:
    """A toy 2D conv encoder (two 3x3 conv layers, average pooled)."""
    return ToyConv(int(info.get("in_channels", 1)), width)


# -- the checks ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toys() -> Iterator[None]:
    register_encoder("toy_conv", ("image",), capabilities=TOY_CAPS)(toy_conv)
    register_encoder("toy_bare", ("image",), capabilities=BARE_CAPS)(toy_conv)
    try:
        yield
    finally:
        unregister_encoder("toy_conv")
        unregister_encoder("toy_bare")


@pytest.fixture(scope="module")
def images(toys: None, medmnist_pngs: Callable, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 real BreastMNIST images (PNG), a manifest and a schema; returns the folder."""
    d = tmp_path_factory.mktemp("toy")
    rows = [
        {"sid": f"s{i}", "pid": f"p{i}", "path": name, "y": ["malignant", "benign"][label]}
        for i, (name, label) in enumerate(medmnist_pngs(d, "breastmnist", 40))
    ]
    pd.DataFrame(rows).to_csv(d / "manifest.csv", index=False)
    Schema.load(
        {
            "id_column": "sid",
            "patient_column": "pid",
            "target": {"task": "binary", "column": "y", "classes": ["benign", "malignant"]},
            "modalities": {
                "image": {"type": "image", "column": "path", "preprocess": {"size": [28, 28]}}
            },
        }
    ).save(d / "schema.yaml")
    return d


def _data(d: Path) -> dict[str, Any]:
    return {
        "manifest": str(d / "manifest.csv"),
        "schema": str(d / "schema.yaml"),
        "val_fraction": 0.25,
        "test_fraction": 0.25,
    }


@pytest.fixture(scope="module")
def trained(images: Path) -> Path:
    cfg = {
        "name": "toy",
        "seed": 0,
        "output_dir": str(images / "run"),
        "data": _data(images),
        "model": {"encoders": {"image": {"name": "toy_conv", "width": 6}}},
        "train": {"epochs": 2, "batch_size": 8},
        "evaluate": {"bootstrap": 20},
    }
    return api.fit(cfg, progress=False).checkpoint


def test_trains_and_explains_with_its_declared_layer(trained: Path, images: Path) -> None:
    out = api.explain(trained, images / "manifest.csv", images / "expl", samples=2)
    meta = json.loads((out.out_dir / "explanations.json").read_text())
    assert ["gradcam", "image"] in meta["plan"] and ["integrated_gradients", "image"] in meta[
        "plan"
    ]
    cam = np.load(out.out_dir / "attributions.npz")
    sid = meta["samples"][0]["sample_id"]
    values = cam[f"{sid}/image/gradcam"]
    assert values.shape == (28, 28) and 0 <= values.min() and values.max() == pytest.approx(1)
    # the map is Grad-CAM of the layer the registration declared (the last ReLU)
    p = Predictor.load(trained)
    ds = p.dataset(pd.read_csv(images / "manifest.csv").head(1), images, None, True)
    item = item_of(ds, 0)
    target = int(meta["samples"][0]["target"] == "malignant")
    score = ModelScore(p.model, item, "image", p.label_map.task, target)
    expected, _ = grad_cam(score, item.inputs["image"], p.model.encoders["image"].features[-1])
    got = create_explainer("gradcam", p, "image").explain(item, target).values
    np.testing.assert_allclose(got, expected, atol=1e-6)


WB = ("weight", "bias")


def test_pretrains_through_its_masked_path(images: Path) -> None:
    assert masked_paths()["toy_conv"] == "toy: hidden pixels zeroed, 1x1 conv decoder"
    cfg = {
        "name": "toy_pretrain",
        "seed": 0,
        "output_dir": str(images / "pretrain"),
        "data": _data(images),
        "encoder": {"name": "toy_conv", "width": 6},
        "mask": {"ratio": 0.5, "patch_size": 4},
        "train": {"epochs": 1, "batch_size": 8, "warmup_epochs": 0, "threads": 1},
    }
    res = api.pretrain(cfg, progress=False)
    assert res.images > 0 and np.isfinite(res.eval_loss_after)
    saved = torch.load(res.checkpoint, weights_only=True)
    assert saved["encoder"] == {"name": "toy_conv", "options": {"width": 6}}
    assert set(saved["encoder_state"]) == {f"features.{i}.{w}" for i in (0, 2) for w in WB}


def test_exports_to_onnx_with_parity(trained: Path, images: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from medmodal.export.onnx import onnx_session, parity

    onnx = api.export(trained, tmp_path / "toy.onnx")
    p = Predictor.load(trained)
    samples = [p.sample({"path": str(images / f"img_{i}.png")}) for i in range(8)]
    assert parity(p, onnx_session(onnx), samples) <= 1e-4


def _untrained(encoder: str) -> Predictor:
    schema = Schema.load(
        {
            "target": {"task": "binary", "column": "y", "classes": ["a", "b"]},
            "modalities": {
                "image": {"type": "image", "column": "f", "preprocess": {"size": [8, 8]}}
            },
        }
    )
    cfg = ExperimentConfig.model_validate({"model": {"encoders": {"image": {"name": encoder}}}})
    procs, labels = make_processors(schema), LabelMap("binary", ["a", "b"])
    return Predictor(schema, labels, procs, model_for(schema, labels, procs, cfg), cfg)


def test_an_encoder_without_capabilities_is_refused(toys: None, tmp_path: Path) -> None:
    p = _untrained("toy_bare")
    with pytest.raises(
        ConfigError, match=r"'gradcam' does not fit encoder 'toy_bare'.*\(baseline_cnn, .*toy_conv"
    ):
        plan(p, methods=["gradcam"])
    with pytest.raises(ConfigError, match=r"'attention_rollout' does not fit .*\(vit\)"):
        plan(p, methods=["attention_rollout"])
    assert [n for n, _, _ in plan(p)] == ["integrated_gradients"]
    with pytest.raises(
        ConfigError,
        match=r"encoder.name: 'toy_bare' has no masked-image pretraining path; use one of "
        r"resnet18, resnet50, swin, toy_conv, vit",
    ):
        load_pretrain_config({"encoder": {"name": "toy_bare"}})
    with pytest.raises(
        ConfigError,
        match=r"the toy_bare encoder has no ONNX export \(the toy says no\); image encoders "
        r"that export: .*toy_conv",
    ):
        export_onnx(p, tmp_path / "bare.onnx")
    assert not (tmp_path / "bare.onnx").exists()


def test_registration_is_undone() -> None:
    register_encoder("toy_once", ("image",), capabilities=TOY_CAPS)(toy_conv)
    assert "toy_once" in encoders_offering(lambda c: c.cam_layer, "image")
    unregister_encoder("toy_once")
    assert "toy_once" not in ENCODERS and "toy_once" not in masked_paths()
    with pytest.raises(ConfigError, match="unknown encoder 'toy_once'"):
        ENCODERS.entry("toy_once")
