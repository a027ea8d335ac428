"""Concatenation fusion (the baseline every other fusion is compared with)."""

from __future__ import annotations

import torch
from torch import nn

from medmodal.fusion.base import FUSIONS, Fusion, FusionOutput, stack_mask


@FUSIONS.register("concat")
class ConcatFusion(Fusion):
    """Concatenation of (optionally projected) embeddings plus the presence mask.

    Each embedding is optionally projected to ``dim``.

    With ``dim=None`` the embeddings are concatenated as they are (a single
    modality then passes straight to the head, as in a plain classifier).
    Absent modalities arrive already replaced by the model's missing token;
    the mask itself is appended so the head knows what was absent.
    """

    def __init__(
        self,
        in_dims: dict[str, int],
        n_outputs: int,
        task: str,
        dim: int | None = None,
        dropout: float = 0.0,
        append_mask: bool | None = None,
    ) -> None:
        super().__init__(in_dims, n_outputs, task)
        self.proj = nn.ModuleDict(
            {
                m: nn.Sequential(nn.Linear(d, dim), nn.LayerNorm(dim), nn.GELU())
                if dim
                else nn.Identity()
                for m, d in in_dims.items()
            }
        )
        self.append_mask = len(in_dims) > 1 if append_mask is None else append_mask
        width = (dim * len(in_dims)) if dim else sum(in_dims.values())
        self.out_dim = width + (len(in_dims) if self.append_mask else 0)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
    ) -> FusionOutput:
        parts = [self.proj[m](embeddings[m]) for m in self.modalities]
        if self.append_mask:
            parts.append(stack_mask(present, self.modalities))
        return FusionOutput(self.dropout(torch.cat(parts, dim=1)), present)
