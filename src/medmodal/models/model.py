"""MultimodalModel = per-modality encoders + fusion + head, built from config by name."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medmodal.config import EncoderSpec, ModelConfig
from medmodal.errors import ConfigError
from medmodal.fusion import FUSIONS, Fusion, FusionOutput
from medmodal.models.encoders.base import DEFAULT_ENCODER, create_encoder
from medmodal.models.heads import HEADS, n_outputs_for
from medmodal.models.init import init_encoder
from medmodal.models.windows import WindowSpec, encode_windows
from medmodal.options import parse_options


@dataclass
class ModelOutput:
    """``logits`` (B, n_outputs) and the fusion's output they came from (for its aux loss)."""

    logits: torch.Tensor
    fusion: FusionOutput


class MultimodalModel(nn.Module):
    """Encode each present modality, fill absent ones with a learned missing token, fuse, predict.

    * Encoders run only on the rows where their modality is present (so batch
      statistics never see placeholders).
    * ``modality_dropout``: during training each present modality of a sample is
      hidden with this probability (never all of a sample's modalities), which
      teaches the model to predict from any subset.
    * ``windows``: {modality: WindowSpec}: that modality's encoder runs on sliding windows of
      an input longer than a window and their embeddings are aggregated (:meth:`encode`).
    """

    def __init__(
        self,
        encoders: dict[str, nn.Module],
        fusion: Fusion,
        head: nn.Module | None,
        modality_dropout: float = 0.0,
        windows: Mapping[str, WindowSpec | None] | None = None,
    ) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.head = head if head is not None else nn.Identity()
        self.modality_dropout = float(modality_dropout)
        self.missing_tokens = nn.ParameterDict(
            {m: nn.Parameter(torch.zeros(enc.out_dim)) for m, enc in encoders.items()}
        )
        self.windows = {m: w for m, w in (windows or {}).items() if w is not None}

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders)

    def _drop(self, present: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not (self.training and self.modality_dropout > 0 and len(self.encoders) > 1):
            return present
        mods = self.modalities
        mask = torch.stack([present[m] for m in mods], dim=1)
        keep = torch.rand(mask.shape, device=mask.device) >= self.modality_dropout
        dropped = mask & keep
        # A sample must keep at least one of its modalities: restore one at random.
        empty = dropped.sum(1) == 0
        if empty.any():
            scores = torch.rand(mask.shape, device=mask.device) * mask.float()
            choice = scores.argmax(1)
            restore = torch.zeros_like(mask)
            restore[torch.arange(mask.shape[0], device=mask.device), choice] = True
            dropped = torch.where(empty[:, None], mask & restore, dropped)
        return {m: dropped[:, i] for i, m in enumerate(mods)}

    def encode(self, modality: str, x: Any) -> torch.Tensor:
        """(B, D) embedding of one modality's batch: its encoder, over sliding windows when the
        modality has them (every caller of an encoder goes through here)."""
        return encode_windows(self.encoders[modality], x, self.windows.get(modality))

    def embed(
        self, inputs: dict[str, Any], present: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Per-modality (B, D) embeddings; absent rows hold the missing token."""
        embs: dict[str, torch.Tensor] = {}
        for m in self.encoders:
            mask = present[m]
            token = self.missing_tokens[m]
            batch = mask.shape[0]
            if bool(mask.all()):
                embs[m] = self.encode(m, inputs[m])
                continue
            out = token.unsqueeze(0).expand(batch, -1).clone()
            if bool(mask.any()):
                idx = mask.nonzero(as_tuple=True)[0]
                sub = _index(inputs[m], idx)
                out = out.index_copy(0, idx, self.encode(m, sub).to(out.dtype))
            embs[m] = out
        return embs

    def run(
        self, inputs: dict[str, Any] | torch.Tensor, present: dict[str, torch.Tensor] | None = None
    ) -> ModelOutput:
        """Logits and the fusion output (training uses it for the fusion's auxiliary loss).

        ``inputs``: {modality: batch}; a bare tensor is accepted for a one-modality model.
        ``present``: {modality: (B,) bool}; None means every modality is present."""
        if not isinstance(inputs, dict):
            if len(self.encoders) != 1:
                raise ValueError(
                    "a bare tensor input needs a one-modality model; pass {modality: tensor}"
                )
            inputs = {self.modalities[0]: inputs}
        if present is None:
            batch = _batch_size(next(iter(inputs.values())))
            device = next(self.parameters()).device
            present = {
                m: torch.ones(batch, dtype=torch.bool, device=device) for m in self.modalities
            }
        present = self._drop(present)
        return self.fuse(self.embed(inputs, present), present)

    def fuse(
        self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
    ) -> ModelOutput:
        """Logits from per-modality (B, D) embeddings (absent rows: the missing token), the
        second half of :meth:`run`; explanations reuse the embeddings of the modalities they hold
        fixed."""
        fused = self.fusion(embeddings, present)
        logits = fused.value if self.fusion.outputs_logits else self.head(fused.value)
        return ModelOutput(logits, fused)

    def forward(
        self, inputs: dict[str, Any] | torch.Tensor, present: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Logits (B, n_outputs); see :meth:`run`."""
        return self.run(inputs, present).logits


def _batch_size(x: Any) -> int:
    return _batch_size(next(iter(x.values()))) if isinstance(x, dict) else int(x.shape[0])


def _index(x: Any, idx: torch.Tensor) -> Any:
    if isinstance(x, torch.Tensor):
        return x.index_select(0, idx)
    if isinstance(x, dict):
        return {k: _index(v, idx) for k, v in x.items()}
    raise TypeError(f"cannot index model input of type {type(x).__name__}")


def build_model(
    modality_types: Mapping[str, str],
    infos: Mapping[str, dict[str, Any]],
    spec: ModelConfig | Mapping[str, Any] | None = None,
    *,
    task: str,
    n_outputs: int,
    load_init: bool = True,
) -> MultimodalModel:
    """Build a model from name-based specs, e.g. ``{"encoders": {"image": {"name": "resnet18"}}}``.

    An encoder spec's ``init`` (a state-dict file or a medmodal checkpoint, e.g. SimMIM-pretrained
    weights) is loaded unless ``load_init`` is False (rebuilding a trained checkpoint);
    ``freeze_init`` keeps the encoder's weights fixed.
    """
    cfg = parse_options(ModelConfig, spec, "model")
    encoders = {
        m: _encoder(m, t, infos.get(m, {}), cfg.encoders.get(m, EncoderSpec()), load_init)
        for m, t in modality_types.items()
    }
    fusion = FUSIONS.create(
        cfg.fusion.name,
        cfg.fusion.options(),
        in_dims={m: e.out_dim for m, e in encoders.items()},
        n_outputs=n_outputs,
        task=task,
    )
    head = None
    if not fusion.outputs_logits:
        head = HEADS.create(
            cfg.head.name, cfg.head.options(), in_dim=fusion.out_dim, n_outputs=n_outputs
        )
    windows = {m: WindowSpec.from_info(infos.get(m, {})) for m in modality_types}
    return MultimodalModel(
        encoders, fusion, head, modality_dropout=cfg.modality_dropout, windows=windows
    )


def _encoder(
    modality: str, mtype: str, info: dict[str, Any], spec: EncoderSpec, load_init: bool
) -> nn.Module:
    name = spec.name or DEFAULT_ENCODER.get(mtype)
    if name is None:
        raise ConfigError(f"no encoder named for modality {modality!r} ({mtype})")
    encoder = create_encoder(name, mtype, info, **spec.options())
    if spec.init is not None and load_init:
        init_encoder(encoder, spec.init, modality, freeze=spec.freeze_init)
    elif spec.freeze_init:
        encoder.requires_grad_(False)
    return encoder


def create_model(
    name: str,
    *,
    num_classes: int = 2,
    task: str = "multiclass",
    in_channels: int = 1,
    size: tuple[int, ...] = (28, 28),
    head: str = "linear",
    **options: Any,
) -> MultimodalModel:
    """An image classifier by encoder name, timm style: ``create_model("resnet18", num_classes=5)``.

    ``size`` with 3 entries builds the 3D variant. The model also accepts a bare (B, C, *size) tensor.
    """
    info = {"in_channels": in_channels, "spatial_dims": len(size), "size": list(size)}
    spec = {"encoders": {"image": {"name": name, **options}}, "head": {"name": head}}
    return build_model(
        {"image": "image"},
        {"image": info},
        spec,
        task=task,
        n_outputs=n_outputs_for(task, num_classes),
    )
