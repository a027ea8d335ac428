"""Fusion registry and contract.

A fusion is built as ``FUSIONS.create(name, options, in_dims={modality: dim}, n_outputs=K,
task=task)``: every fusion is told the task. It is called as ``fusion(embeddings, present)``
where ``embeddings[m]`` is (B, in_dims[m]) and ``present[m]`` a (B,) bool tensor, and returns a
:class:`FusionOutput`: ``value`` is (B, out_dim) features for the model's head or, when the
class sets ``outputs_logits``, the task's logits themselves. A fusion that trains with an
auxiliary objective returns what it needs in the output (``modality_logits``) and computes the
loss in :meth:`Fusion.auxiliary_loss`; nothing from a forward pass is kept on the module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from medmodal.registry import Registry

FUSIONS: Registry[nn.Module] = Registry("fusion", context=("in_dims", "n_outputs", "task"))
TASKS = ("binary", "multiclass", "multilabel", "survival")


@dataclass
class FusionOutput:
    """What a fusion returns for one batch.

    ``value``: (B, out_dim) features, or (B, n_outputs) logits when ``outputs_logits``.
    ``modality_logits``: per-modality (B, n_outputs) predictions, for fusions that have them.
    ``present``: the mask the fusion saw (after modality dropout).
    """

    value: torch.Tensor
    present: dict[str, torch.Tensor]
    modality_logits: dict[str, torch.Tensor] = field(default_factory=dict)


class Fusion(nn.Module):
    """Base class: subclasses set ``out_dim`` and implement ``forward``."""

    outputs_logits: ClassVar[bool] = False  # True: ``value`` is the task's logits (no head)
    ignores_absent: ClassVar[bool] = False  # True: output does not depend on absent modalities
    out_dim: int

    def __init__(self, in_dims: dict[str, int], n_outputs: int, task: str) -> None:
        super().__init__()
        if not in_dims:
            raise ValueError("a fusion needs at least one modality")
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, not {task!r}")
        self.modalities = list(in_dims)
        self.in_dims = dict(in_dims)
        self.n_outputs = n_outputs
        self.task = task

    def forward(
        self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
    ) -> FusionOutput:
        raise NotImplementedError

    def auxiliary_loss(
        self, output: FusionOutput, target: torch.Tensor, loss_fn: nn.Module
    ) -> torch.Tensor | None:
        """An extra training loss computed from ``output`` (default: none)."""
        return None


def stack_mask(present: dict[str, torch.Tensor], modalities: list[str]) -> torch.Tensor:
    """(B, M) float mask in ``modalities`` order."""
    return torch.stack([present[m].float() for m in modalities], dim=1)
