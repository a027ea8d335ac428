"""Encoders for every modality, registered by name with what they offer (see :mod:`.base`)."""

from medmodal.models.encoders import (  # noqa: F401  (registers)
    audio,
    image,
    inception1d,
    signal,
    swin,
    tabular,
    text,
    vit,
    xresnet1d,
)
from medmodal.models.encoders.base import (
    DEFAULT_ENCODER,
    ENCODERS,
    EncoderCapabilities,
    MaskedPath,
    MaskedSpec,
    create_encoder,
    encoder_capabilities,
    register_encoder,
)

__all__ = [
    "DEFAULT_ENCODER",
    "ENCODERS",
    "EncoderCapabilities",
    "MaskedPath",
    "MaskedSpec",
    "create_encoder",
    "encoder_capabilities",
    "register_encoder",
]
