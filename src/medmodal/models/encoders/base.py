"""Encoder registry: every encoder maps one modality's batch to a (B, out_dim) embedding.

An encoder constructor is registered with the modality types it accepts and is
called as ``fn(info=processor.info(), **user_kwargs)``; the returned module has
an ``out_dim`` attribute.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from medmodal.errors import ConfigError
from medmodal.registry import Registry

ENCODERS: Registry[nn.Module] = Registry("encoder", context=("info",))
_MODALITIES: dict[str, tuple[str, ...]] = {}
DEFAULT_ENCODER: dict[str, str] = {}


def register_encoder(
    name: str, modalities: tuple[str, ...], default: bool = False
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``fn(info, **kw) -> nn.Module`` for the given modality types."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        ENCODERS.register(name)(fn)
        _MODALITIES[name] = modalities
        if default:
            for m in modalities:
                DEFAULT_ENCODER[m] = name
        return fn

    return deco


def encoder_modalities(name: str) -> tuple[str, ...]:
    ENCODERS.get(name)
    return _MODALITIES[name]


def create_encoder(
    name: str, modality_type: str, info: dict[str, Any], **options: Any
) -> nn.Module:
    """Build encoder ``name`` for a modality of ``modality_type``; checks they fit."""
    ENCODERS.get(name)
    if modality_type not in _MODALITIES[name]:
        raise ConfigError(
            f"encoder {name!r} takes {', '.join(_MODALITIES[name])} inputs, not {modality_type}"
        )
    module = ENCODERS.create(name, options, info=info)
    if not isinstance(getattr(module, "out_dim", None), int):
        raise TypeError(f"encoder {name!r} must set an integer `out_dim`")
    return module
