"""Image models by name: shapes for 2D/3D, heads per task, and the classic baseline CNN."""

from __future__ import annotations

import pytest
import torch

from medmodal.models import create_model
from medmodal.models.encoders import ENCODERS
from medmodal.models.encoders.base import encoder_modalities


@pytest.mark.parametrize("name", [n for n in ENCODERS.names() if "image" in encoder_modalities(n)])
@pytest.mark.parametrize("channels", [1, 3])
def test_image_encoders_2d(name: str, channels: int) -> None:
    model = create_model(name, num_classes=5, in_channels=channels, size=(28, 28))
    out = model(torch.randn(2, channels, 28, 28))
    assert out.shape == (2, 5)
    out.sum().backward()
    enc = model.encoders["image"]
    assert all(p.grad is not None for p in enc.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["resnet18", "baseline_cnn"])
def test_3d_variants(name: str) -> None:
    model = create_model(name, num_classes=2, task="binary", size=(16, 16, 16))
    assert model(torch.randn(2, 1, 16, 16, 16)).shape == (2, 1)


def test_heads_per_task() -> None:
    assert create_model("baseline_cnn", task="binary")(torch.randn(3, 1, 28, 28)).shape == (3, 1)
    assert create_model("baseline_cnn", task="multilabel", num_classes=4)(
        torch.randn(3, 1, 28, 28)
    ).shape == (3, 4)


def test_baseline_cnn_is_the_classic_architecture() -> None:
    enc = create_model("baseline_cnn", num_classes=10).encoders["image"]
    conv = enc.features[0]
    assert conv.out_channels == 32 and conv.kernel_size == (3, 3)
    assert isinstance(enc.features[1], torch.nn.ReLU) and isinstance(
        enc.features[2], torch.nn.MaxPool2d
    )
    assert enc.fc[0].in_features == 32 * 13 * 13 and enc.fc[0].out_features == 128
    # The dense layer exists before the first forward (no layer built inside forward).
    n_before = sum(p.numel() for p in enc.parameters())
    enc(torch.randn(1, 1, 28, 28))
    assert sum(p.numel() for p in enc.parameters()) == n_before


def test_small_input_stem_keeps_resolution() -> None:
    enc = create_model("resnet18", size=(28, 28)).encoders["image"]
    assert enc.body.conv1.stride == (1, 1) and enc.body.conv1.kernel_size == (3, 3)
    big = create_model("resnet18", size=(224, 224)).encoders["image"]
    assert big.body.conv1.stride == (2, 2)


def test_capabilities_declared_at_registration() -> None:
    """Which built-in encoders offer what, and the exact layer each declares for Grad-CAM (the
    modules Grad-CAM, rollout, pretraining and export used before they asked the registry)."""
    from medmodal.models.encoders.base import create_encoder, encoder_capabilities
    from medmodal.models.encoders.base import encoders_offering as offering

    assert offering(lambda c: c.cam_layer) == [
        "audio_cnn", "baseline_cnn", "cnn1d", "densenet121", "inception1d", "resnet18",
        "resnet1d", "resnet50", "xresnet1d",
    ]  # fmt: skip
    assert offering(lambda c: c.attention) == ["vit"]
    assert offering(lambda c: c.masked_path) == ["resnet18", "resnet50", "swin", "vit"]
    assert offering(lambda c: c.token_embedding) == ["bigru", "bilstm", "minilm"]
    assert offering(lambda c: c.gradients) == ["minilm"]
    assert [n for n in ENCODERS.names() if not encoder_capabilities(n).onnx] == []  # all export
    patched = {n: encoder_capabilities(n).masked_path for n in ("vit", "swin", "resnet18")}
    assert {n: p.patch_option for n, p in patched.items() if p} == {
        "vit": "patch_size", "swin": "patch_size", "resnet18": None
    }  # fmt: skip
    image = {"in_channels": 1, "spatial_dims": 2, "size": (28, 28)}
    layers = {
        "baseline_cnn": lambda e: e.features[1],
        "resnet18": lambda e: e.body.layer4,
        "resnet50": lambda e: e.body.layer4,
        "densenet121": lambda e: e.body.class_layers.relu,
    }
    for name, layer in layers.items():
        enc = create_encoder(name, "image", image)
        assert encoder_capabilities(name).cam_layer(enc) is layer(enc), name
    audio = create_encoder("audio_cnn", "audio", {"in_channels": 1})
    assert encoder_capabilities("audio_cnn").cam_layer(audio) is audio.features[-2]
    signal_layers = {
        "cnn1d": lambda e: e.features[-2],
        "resnet1d": lambda e: e.stages,
        "xresnet1d": lambda e: e.stages,
        "inception1d": lambda e: e.features,
    }
    for name, layer in signal_layers.items():
        enc = create_encoder(name, "signal", {"in_channels": 2})
        assert encoder_capabilities(name).cam_layer(enc) is layer(enc), name
    assert isinstance(audio.features[-2], torch.nn.ReLU)


def test_an_encoder_without_onnx_says_why() -> None:
    from medmodal.models.encoders.base import EncoderCapabilities

    with pytest.raises(ValueError, match="says why"):
        EncoderCapabilities(onnx=False)
    with pytest.raises(ValueError, match=r"notes on unknown capabilities \['cam'\]"):
        EncoderCapabilities(notes={"cam": "typo"})
