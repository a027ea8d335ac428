"""Initialise an encoder from saved weights (e.g. a SimMIM-pretrained image encoder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from medmodal.errors import ConfigError


def encoder_state(path: str | Path, modality: str) -> dict[str, torch.Tensor]:
    """The encoder's state dict from ``path``.

    ``path`` holds a plain state dict of the encoder, a pretrained-encoder checkpoint
    (``medmodal pretrain``; its ``encoder_state``, whatever the modality was called there), or a
    medmodal checkpoint, whose ``encoders.<modality>.*`` weights are used.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"encoder init for {modality!r}: file not found: {p}")
    try:
        body: Any = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets one message
        raise ConfigError(f"encoder init for {modality!r}: cannot read {p}: {e}") from e
    if isinstance(body, dict) and isinstance(body.get("encoder_state"), dict):
        return body["encoder_state"]
    if isinstance(body, dict) and isinstance(body.get("model_state"), dict):
        prefix = f"encoders.{modality}."
        state = {
            k[len(prefix) :]: v for k, v in body["model_state"].items() if k.startswith(prefix)
        }
        if not state:
            raise ConfigError(
                f"encoder init: checkpoint {p} has no encoder for modality {modality!r}"
            )
        return state
    if isinstance(body, dict) and body and all(isinstance(v, torch.Tensor) for v in body.values()):
        return body
    raise ConfigError(
        f"encoder init for {modality!r}: {p} is neither a state dict nor a medmodal checkpoint"
    )


def init_encoder(encoder: nn.Module, path: str | Path, modality: str, freeze: bool = False) -> None:
    """Load weights into ``encoder`` (every key must match) and optionally freeze it."""
    state = encoder_state(path, modality)
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0:2]
        raise ConfigError(
            f"encoder init for {modality!r} from {path}: weights do not fit: {' '.join(first)}"
            + _pretrained_as(path)
        ) from e
    if freeze:
        for prm in encoder.parameters():
            prm.requires_grad_(False)


def _pretrained_as(path: str | Path) -> str:
    """For a pretrained-encoder checkpoint: the encoder and input it was made for (the usual cause
    of a mismatch is other options or another image size)."""
    body = torch.load(path, map_location="cpu", weights_only=True)
    enc, info = body.get("encoder"), body.get("info")
    if not isinstance(enc, dict) or not isinstance(info, dict):
        return ""
    return (
        f" (it holds a pretrained {enc.get('name')!r} encoder with options {enc.get('options')} "
        f"for {info.get('in_channels')}-channel inputs of size {info.get('size')}: use the same "
        "encoder, options and preprocess size)"
    )
