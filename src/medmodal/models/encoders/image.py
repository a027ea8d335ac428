"""Convolutional image encoders (2D and 3D): the baseline CNN and MONAI's ResNets and DenseNet.

``info`` comes from the image processor: ``in_channels``, ``spatial_dims`` and
``size`` (the fixed input size after resizing). The ViT and the Swin transformer are in
:mod:`.vit` and :mod:`.swin`. Each registration declares what the encoder offers: the layer
Grad-CAM weighs and, for the ResNets, the SparK-style masked-image path.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from monai.networks import nets
from torch import nn

from medmodal.models.encoders.base import (
    EncoderCapabilities,
    MaskedPath,
    MaskedSpec,
    register_encoder,
)
from medmodal.models.encoders.masked.conv import ResNetSimMIM

IMAGE = ("image",)


def image_dims(info: dict[str, Any]) -> tuple[int, int, tuple[int, ...]]:
    size = tuple(int(s) for s in info.get("size", (28, 28)))
    return int(info.get("in_channels", 1)), int(info.get("spatial_dims", len(size))), size


class BaselineCNN(nn.Module):
    """The classic Keras example: Conv(32, 3x3)+ReLU -> MaxPool(2) -> Flatten -> Dense(hidden)+ReLU.

    The final Dense(classes) is the model's head. Its Dense layer is sized at
    construction from the fixed input size (never inside ``forward``).
    """

    def __init__(
        self, in_channels: int, size: tuple[int, ...], hidden: int = 128, filters: int = 32
    ) -> None:
        super().__init__()
        dims = len(size)
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        pool = nn.MaxPool2d if dims == 2 else nn.MaxPool3d
        self.features = nn.Sequential(
            conv(in_channels, filters, 3), nn.ReLU(), pool(2), nn.Flatten()
        )
        flat = filters * math.prod((s - 2) // 2 for s in size)
        self.fc = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU())
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


BASELINE_CAPS = EncoderCapabilities(
    cam_layer=lambda m: m.features[1],  # conv -> ReLU (before the pooling)
    notes={"masked_path": "its dense layer sees the whole image, so hidden regions do not stay "
           "empty"},
)  # fmt: skip


@register_encoder("baseline_cnn", IMAGE, capabilities=BASELINE_CAPS)
def baseline_cnn(info: dict[str, Any], hidden: int = 128, filters: int = 32) -> nn.Module:
    """Seed-style CNN: one conv layer, max-pool, dense (the classic Keras example)."""
    c, _, size = image_dims(info)
    return BaselineCNN(c, size, hidden=hidden, filters=filters)


class _Features(nn.Module):
    """Wrap a MONAI classifier body so it returns pooled features of width ``out_dim``."""

    def __init__(self, body: nn.Module, out_dim: int) -> None:
        super().__init__()
        self.body = body
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _resnet(
    info: dict[str, Any], block: str, layers: list[int], small_input: bool | None
) -> nn.Module:
    c, sd, size = image_dims(info)
    small = min(size) <= 64 if small_input is None else small_input
    # Small inputs (MedMNIST 28/64 px): 3x3 stride-1 stem without max-pool, as MedMNIST's ResNet.
    body = nets.ResNet(
        block=block,
        layers=layers,
        block_inplanes=[64, 128, 256, 512],
        spatial_dims=sd,
        n_input_channels=c,
        conv1_t_size=3 if small else 7,
        conv1_t_stride=1 if small else 2,
        no_max_pool=small,
        feed_forward=False,
    )
    width = 512 * (4 if block == "bottleneck" else 1)
    return _Features(body, width)


def _spark(encoder: nn.Module, spec: MaskedSpec) -> nn.Module:
    return ResNetSimMIM(encoder, spec.channels, spec.dims, width=spec.decoder_width)


RESNET_CAPS = EncoderCapabilities(
    cam_layer=lambda m: m.body.layer4,
    masked_path=MaskedPath(
        _spark, "SparK-style: hidden regions empty at every stage, light U-Net decoder"
    ),
)


@register_encoder("resnet18", IMAGE, default=True, capabilities=RESNET_CAPS)
def resnet18(info: dict[str, Any], small_input: bool | None = None) -> nn.Module:
    """MONAI ResNet-18 (2D or 3D); small-input stem for images of 64 px or less."""
    return _resnet(info, "basic", [2, 2, 2, 2], small_input)


@register_encoder("resnet50", IMAGE, capabilities=RESNET_CAPS)
def resnet50(info: dict[str, Any], small_input: bool | None = None) -> nn.Module:
    """MONAI ResNet-50 (bottleneck blocks, 2048-wide features)."""
    return _resnet(info, "bottleneck", [3, 4, 6, 3], small_input)


DENSENET_CAPS = EncoderCapabilities(
    cam_layer=lambda m: m.body.class_layers.relu,  # the final ReLU of the features
    notes={"masked_path": "it concatenates every layer, so hidden regions do not stay empty"},
)


@register_encoder("densenet121", IMAGE, capabilities=DENSENET_CAPS)
def densenet121(info: dict[str, Any], small_input: bool | None = None) -> nn.Module:
    """MONAI DenseNet-121; the classifier's last Linear is removed (1024-wide features).

    Small inputs (64 px or less) get a 3x3 stride-1 stem without max-pool, so the three
    transition layers do not shrink a 28-px image to nothing.
    """
    c, sd, size = image_dims(info)
    net = nets.DenseNet121(spatial_dims=sd, in_channels=c, out_channels=1)
    if (min(size) <= 64) if small_input is None else small_input:
        conv = nn.Conv2d if sd == 2 else nn.Conv3d
        net.features.conv0 = conv(
            c, net.features.conv0.out_channels, 3, stride=1, padding=1, bias=False
        )
        net.features.pool0 = nn.Identity()
    width = net.class_layers.out.in_features
    net.class_layers.out = nn.Identity()
    return _Features(net, width)
