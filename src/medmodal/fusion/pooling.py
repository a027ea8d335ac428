"""Masked mean / sum pooling of per-modality projections (+ helpers shared by other fusions)."""

from __future__ import annotations

import torch
from torch import nn

from medmodal.fusion.base import FUSIONS, Fusion, stack_mask


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

    ``reduce="mean"`` divides by the number of present modalities, ``"sum"`` does not.
    Absent modalities are ignored entirely (their values never reach the output);
    a row with no present modality yields zeros.
    """

    ignores_absent = True

    def __init__(
        self,
        in_dims: dict[str, int],
        n_outputs: int,
        dim: int = 128,
        dropout: float = 0.0,
        reduce: str = "mean",
    ) -> None:
        super().__init__(in_dims, n_outputs)
        if reduce not in ("mean", "sum"):
            raise ValueError(f"reduce must be 'mean' or 'sum', not {reduce!r}")
        self.reduce = reduce
        self.proj = projections(in_dims, dim)
        self.dropout = nn.Dropout(dropout)
        self.out_dim = dim

    def forward(
        self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
    ) -> torch.Tensor:
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
        return self.dropout(out)


@FUSIONS.register("mean")
def mean(in_dims: dict[str, int], n_outputs: int, **kw) -> Fusion:
    """Masked mean of per-modality projections (absent modalities ignored)."""
    return PoolFusion(in_dims, n_outputs, reduce="mean", **kw)


@FUSIONS.register("sum")
def sum_(in_dims: dict[str, int], n_outputs: int, **kw) -> Fusion:
    """Masked sum of per-modality projections (absent modalities ignored)."""
    return PoolFusion(in_dims, n_outputs, reduce="sum", **kw)
