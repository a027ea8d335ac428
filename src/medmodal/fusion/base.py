"""Fusion registry and contract.

A fusion is built as ``FUSIONS.create(name, in_dims={modality: dim}, n_outputs=K, **kw)``
and called as ``fusion(embeddings, present)`` where ``embeddings[m]`` is (B, in_dims[m])
and ``present[m]`` is a (B,) bool tensor. It returns (B, out_dim). A fusion whose
``outputs_logits`` is True (late fusion) returns the task's logits itself and the
model skips its head.
"""

from __future__ import annotations

import torch
from torch import nn

from medmodal.registry import Registry

FUSIONS: Registry[nn.Module] = Registry("fusion")


class Fusion(nn.Module):
    """Base class: subclasses set ``out_dim`` and implement ``forward``."""

    outputs_logits: bool = False
    ignores_absent: bool = False  # True: output does not depend on absent modalities at all
    out_dim: int

    def __init__(self, in_dims: dict[str, int], n_outputs: int) -> None:
        super().__init__()
        if not in_dims:
            raise ValueError("a fusion needs at least one modality")
        self.modalities = list(in_dims)
        self.in_dims = dict(in_dims)
        self.n_outputs = n_outputs

    def forward(
        self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        raise NotImplementedError


def stack_mask(present: dict[str, torch.Tensor], modalities: list[str]) -> torch.Tensor:
    """(B, M) float mask in ``modalities`` order."""
    return torch.stack([present[m].float() for m in modalities], dim=1)
