"""Encoder registry: every encoder maps one modality's batch to a (B, out_dim) embedding.

An encoder constructor is registered with the modality types it accepts and is
called as ``fn(info=processor.info(), **user_kwargs)``; the returned module has
an ``out_dim`` attribute.

What an encoder offers beyond its embedding is declared **where it is registered**, in its
:class:`EncoderCapabilities` (as timm keeps ``default_cfgs`` next to each model): the layer
Grad-CAM weighs, the token embedding Integrated Gradients integrates over, the attention maps
rollout multiplies, its masked-image pretraining path, whether it exports to ONNX. Explanations,
pretraining and export read them through :func:`encoder_capabilities`, never the module's type,
so an explainable, pretrainable encoder is one file (see ``docs/architecture.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import torch
from pydantic import BaseModel
from torch import nn

from medmodal.errors import ConfigError
from medmodal.registry import Registry

ENCODERS: Registry[nn.Module] = Registry("encoder", context=("info",))
_MODALITIES: dict[str, tuple[str, ...]] = {}
DEFAULT_ENCODER: dict[str, str] = {}


@dataclass(frozen=True)
class MaskedSpec:
    """What a masked-image model is built for: the image's channels and spatial dimensions, and
    the decoder width a path may use (``decoder_width`` of the pretraining config)."""

    channels: int
    dims: int
    decoder_width: int = 64


class MaskedModel(Protocol):
    """What a masked path builds: ``model(x, mask)`` reconstructs ``x`` (B, C, *size) with the
    mask's hidden patches never seen; ``mask`` is (B, *size / model_patch) bool, True = hidden.
    ``encoder`` is the encoder module (the checkpoint keeps its state dict, names unchanged)."""

    encoder: nn.Module

    @property
    def model_patch(self) -> int: ...

    def __call__(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor: ...

    def hidden_pixels(self, mask: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class MaskedPath:
    """An image encoder's masked-image pretraining path: ``build(encoder, spec)`` returns its
    :class:`MaskedModel` (a ValueError for a geometry that does not fit); ``about`` says how it
    hides patches; ``patch_option``: the encoder option that is its patch side (the mask patch must
    be a multiple of it), None when the model patch is one pixel."""

    build: Callable[[nn.Module, MaskedSpec], nn.Module]
    about: str
    patch_option: str | None = None


@dataclass(frozen=True)
class EncoderCapabilities:
    """What an encoder offers beyond its embedding; each callable takes the built module.

    * ``cam_layer``: the module whose output Grad-CAM weighs (activations (B, K, *spatial)).
    * ``token_embedding``: the token embedding table token Integrated Gradients integrates over.
    * ``gradients``: a context in which gradients flow through the encoder while it is explained
      (a frozen encoder that turns them off in its forward); default: nothing to do.
    * ``attention``: a context recording, in order, each block's (B, heads, N, N) attention of
      the forwards inside it, for attention rollout (the encoder mean-pools its N patch tokens).
    * ``masked_path``: its masked-image pretraining path (:class:`MaskedPath`).
    * ``onnx``: exports to ONNX (False: ``notes["onnx"]`` says why).
    * ``notes``: why a capability is absent (key: the field's name), shown when one is asked for.
    """

    cam_layer: Callable[[nn.Module], nn.Module] | None = None
    token_embedding: Callable[[nn.Module], nn.Module] | None = None
    gradients: Callable[[nn.Module], AbstractContextManager[None]] | None = None
    attention: Callable[[nn.Module], AbstractContextManager[list[torch.Tensor]]] | None = None
    masked_path: MaskedPath | None = None
    onnx: bool = True
    notes: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = {f.name for f in fields(self)} - {"notes"}
        unknown = sorted(set(self.notes) - known)
        if unknown:
            raise ValueError(f"notes on unknown capabilities {unknown}; known: {sorted(known)}")
        if not self.onnx and not self.notes.get("onnx"):
            raise ValueError("an encoder without ONNX export says why (notes={'onnx': ...})")

    def why_not(self, capability: str) -> str:
        """`` (<note>)`` when a note says why ``capability`` is absent, else ``""``."""
        note = self.notes.get(capability)
        return f" ({note})" if note else ""


NO_CAPABILITIES = EncoderCapabilities()


def register_encoder(
    name: str,
    modalities: tuple[str, ...],
    default: bool = False,
    *,
    capabilities: EncoderCapabilities = NO_CAPABILITIES,
    options: type[BaseModel] | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``fn(info, **kw) -> nn.Module`` (or ``fn(info, options)`` with an ``options``
    model) for the given modality types, with what the encoder offers (``capabilities``)."""

    if not isinstance(capabilities, EncoderCapabilities):
        raise TypeError(f"encoder {name!r}: capabilities must be an EncoderCapabilities")

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        ENCODERS.register(name, options=options, capabilities=capabilities)(fn)
        _MODALITIES[name] = modalities
        if default:
            for m in modalities:
                DEFAULT_ENCODER[m] = name
        return fn

    return deco


def unregister_encoder(name: str) -> None:
    """Remove ``name`` (tests registering an encoder of their own clean up with it)."""
    ENCODERS.unregister(name)
    _MODALITIES.pop(name, None)
    for m in [m for m, n in DEFAULT_ENCODER.items() if n == name]:
        del DEFAULT_ENCODER[m]


def encoder_modalities(name: str) -> tuple[str, ...]:
    ENCODERS.get(name)
    return _MODALITIES[name]


def encoder_capabilities(name: str) -> EncoderCapabilities:
    """What encoder ``name`` declared at registration (nothing declared: no capability)."""
    caps = ENCODERS.capabilities(name)
    return NO_CAPABILITIES if caps is None else caps


def encoders_offering(
    offers: Callable[[EncoderCapabilities], object], modality_type: str | None = None
) -> list[str]:
    """Sorted names of the encoders (of ``modality_type`` inputs) whose capabilities satisfy
    ``offers``, e.g. ``encoders_offering(lambda c: c.cam_layer, "image")``."""
    return [
        n
        for n in ENCODERS.names()
        if offers(encoder_capabilities(n))
        and (modality_type is None or modality_type in _MODALITIES.get(n, ()))
    ]


def encoder_name(name: str | None, modality_type: str) -> str:
    """The configured encoder ``name``, or the default encoder of ``modality_type``."""
    resolved = name or DEFAULT_ENCODER.get(modality_type)
    if resolved is None:
        raise ConfigError(f"no encoder named for {modality_type} inputs and none is the default")
    return resolved


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
