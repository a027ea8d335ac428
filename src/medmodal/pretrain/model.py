"""Which encoders have a masked-image path, and building one (+ its mask generator).

An image encoder's path is what its registration declares
(:class:`~medmodal.models.encoders.base.MaskedPath` in its ``EncoderCapabilities``): this module
asks the registry, never the encoder's type.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from medmodal.errors import ConfigError
from medmodal.models.encoders import create_encoder
from medmodal.models.encoders.base import (
    ENCODERS,
    MaskedPath,
    MaskedSpec,
    encoder_capabilities,
    encoders_offering,
)
from medmodal.pretrain.masks import MaskGenerator


def masked_paths() -> dict[str, str]:
    """Encoder name -> how it is pretrained, for every image encoder that declares a path."""
    names = encoders_offering(lambda c: c.masked_path, "image")
    return {n: path.about for n in names if (path := encoder_capabilities(n).masked_path)}


def check_path(name: str) -> MaskedPath:
    """The masked-image path of encoder ``name``; ConfigError naming ``encoder.name`` (and the
    encoders that have one) when it has none."""
    ENCODERS.entry(name)  # an unknown name: ConfigError listing the known ones
    caps = encoder_capabilities(name)
    if caps.masked_path is None:
        raise ConfigError(
            f"encoder.name: {name!r} has no masked-image pretraining path"
            f"{caps.why_not('masked_path')}; use one of {', '.join(masked_paths()) or '(none)'}"
        )
    return caps.masked_path


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
    path = check_path(name)
    encoder = create_encoder(name, "image", info, **options)
    spec = MaskedSpec(int(info["in_channels"]), int(info["spatial_dims"]), decoder_width)
    try:
        model = path.build(encoder, spec)
    except ValueError as exc:
        raise ConfigError(f"encoder ({name}): {exc}") from None
    masks = MaskGenerator(info["size"], mask_patch, model.model_patch, ratio)
    return model, masks
