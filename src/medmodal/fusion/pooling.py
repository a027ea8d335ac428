"""Masked mean / sum pooling of per-modality projections (+ helpers shared by other fusions)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from medmodal.fusion.base import FUSIONS, Fusion, FusionOutput, stack_mask


def projections(in_dims: dict[str, int], dim: int) -> nn.ModuleDict:
    """One ``Linear(D_m, dim) -> LayerNorm -> GELU`` per modality."""
    return nn.ModuleDict(
        {
            m: nn.Sequential(nn.Linear(d, dim), nn.LayerNorm(dim), nn.GELU())
            for m, d in in_dims.items()
        }
    )


def zero_absent(x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` (B, D) whose modality is absent set to 0 (exactly, even for NaN/inf)."""
    return torch.where(
        present.bool().unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device)
    )


class PoolFusion(Fusion):
    """Project every modality to ``dim`` and pool over the present ones.

    Subclasses set ``reduce``: ``"mean"`` divides by the number of present modalities,
    ``"sum"`` does not. Absent modalities are ignored entirely (their values never reach the
    output); a row with no present modality yields zeros.
    """

    ignores_absent = True
    reduce: ClassVar[str] = "mean"

    def __init__(
        self,
        in_dims: dict[str, int],
        n_outputs: int,
        task: str,
        dim: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_dims, n_outputs, task)
        self.proj = projections(in_dims, dim)
        self.dropout = nn.Dropout(dropout)
        self.out_dim = dim

    def forward(
        self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
    ) -> FusionOutput:
        mask = stack_mask(present, self.modalities)  # (B, M)
        h = torch.stack(
            [
                zero_absent(self.proj[m](zero_absent(embeddings[m], present[m])), present[m])
                for m in self.modalities
            ],
            dim=1,
        )  # (B, M, dim), absent rows exactly 0
        out = h.sum(1)
        if self.reduce == "mean":
            out = out / mask.sum(1, keepdim=True).clamp_min(1.0).to(out.dtype)
        return FusionOutput(self.dropout(out), present)


@FUSIONS.register("mean")
class MeanFusion(PoolFusion):
    """Masked mean of per-modality projections (absent modalities ignored)."""

    reduce = "mean"


@FUSIONS.register("sum")
class SumFusion(PoolFusion):
    """Masked sum of per-modality projections (absent modalities ignored)."""

    reduce = "sum"
