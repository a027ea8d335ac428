"""Which encoders have a masked-image path, and building one (+ its mask generator)."""

from __future__ import annotations

from typing import Any

from torch import nn

from medmodal.errors import ConfigError
from medmodal.models.encoders import create_encoder
from medmodal.pretrain.conv import ResNetSimMIM
from medmodal.pretrain.masks import MaskGenerator
from medmodal.pretrain.swin import SwinSimMIM
from medmodal.pretrain.vit import ViTSimMIM, vit_patch

# encoder name -> how it is pretrained
PATHS = {
    "vit": "SimMIM: learned mask token on the patch embeddings, linear + pixel-shuffle decoder",
    "swin": "SimMIM: learned mask token on the patch embeddings, the stages, 1x1 conv + pixel "
    "shuffle decoder of the last stage",
    "resnet18": "SparK-style: hidden regions empty at every stage, light U-Net decoder",
    "resnet50": "SparK-style: hidden regions empty at every stage, light U-Net decoder",
}
# encoders whose ``patch_size`` option is the model patch (the mask patch must be a multiple)
PATCHED = ("vit", "swin")


def check_path(name: str) -> None:
    """ConfigError naming ``encoder.name`` when the encoder has no masked-image path."""
    if name not in PATHS:
        raise ConfigError(
            f"encoder.name: {name!r} has no masked-image pretraining path; use one of "
            f"{', '.join(sorted(PATHS))} (densenet121 concatenates every layer, and the baseline "
            "CNN's dense layer sees the whole image, so neither keeps hidden regions empty)"
        )


def build_simmim(
    name: str,
    options: dict[str, Any],
    info: dict[str, Any],
    mask_patch: int,
    ratio: float,
    decoder_width: int = 64,
) -> tuple[nn.Module, MaskGenerator]:
    """The encoder ``name`` (its registered constructor, typed ``options``) inside its masked-image
    model, and the mask generator aligned with it."""
    check_path(name)
    encoder = create_encoder(name, "image", info, **options)
    channels, dims = int(info["in_channels"]), int(info["spatial_dims"])
    try:
        if name == "vit":
            model: nn.Module = ViTSimMIM(encoder, channels, vit_patch(encoder), dims)
        elif name == "swin":
            model = SwinSimMIM(encoder, channels, dims)
        else:
            model = ResNetSimMIM(encoder, channels, dims, width=decoder_width)
    except ValueError as exc:
        raise ConfigError(f"encoder ({name}): {exc}") from None
    masks = MaskGenerator(info["size"], mask_patch, model.model_patch, ratio)
    return model, masks
