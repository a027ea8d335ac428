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
