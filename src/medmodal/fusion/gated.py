"""Gated multimodal unit (Arevalo et al., 2017) generalised to M modalities."""

from __future__ import annotations

import torch
from torch import nn

from medmodal.fusion.base import FUSIONS, Fusion, FusionOutput, stack_mask
from medmodal.fusion.pooling import zero_absent


@FUSIONS.register("gated")
class GatedFusion(Fusion):
    """Gated multimodal unit: softmax gates over present modalities weight tanh projections.

    ``h_m = tanh(W_m x_m)``; gates ``z = softmax_present(W_z [h_1..h_M, mask])``; out ``sum z_m h_m``.

    The gate logits see every present modality's hidden vector (absent ones are
    zeroed) and the presence mask; the softmax runs over present modalities only
    (absent logits are -inf), so absent modalities never reach the output.
    ``per_dim=True`` (default, as in the original GMU) gives each of the ``dim``
    features its own gate and ``modality_weights`` averages them over features;
    ``per_dim=False`` uses one scalar gate per modality, which tends to saturate
    into picking a single modality per sample (losing joint information).
    A row with no present modality yields zeros.
    """

    ignores_absent = True

    def __init__(
        self,
        in_dims: dict[str, int],
        n_outputs: int,
        task: str,
        dim: int = 128,
        per_dim: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_dims, n_outputs, task)
        n = len(in_dims)
        self.proj = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in in_dims.items()})
        self.gate = nn.Linear(n * dim + n, n * dim if per_dim else n)
        self.per_dim, self.dim = per_dim, dim
        self.dropout = nn.Dropout(dropout)
        self.out_dim = dim

    def _gates(
        self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden vectors (B, M, dim) (absent = 0) and gates (B, M, dim or 1)."""
        mods = self.modalities
        h = torch.stack(
            [
                zero_absent(
                    torch.tanh(self.proj[m](zero_absent(embeddings[m], present[m]))), present[m]
                )
                for m in mods
            ],
            dim=1,
        )
        mask = stack_mask(present, mods).to(h.dtype)  # (B, M)
        g = self.gate(torch.cat([self.dropout(h).flatten(1), mask], dim=1))
        g = g.view(h.shape[0], len(mods), self.dim if self.per_dim else 1)
        m3 = mask.bool().unsqueeze(-1)
        any_present = m3.any(1, keepdim=True)
        # Rows with nothing present: softmax over all (finite), then zeroed.
        z = torch.softmax(torch.where(m3 | ~any_present, g, float("-inf")), dim=1)
        return h, torch.where(m3, z, 0.0)

    def forward(
        self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
    ) -> FusionOutput:
        h, z = self._gates(embeddings, present)
        return FusionOutput(self.dropout((z * h).sum(1)), present)

    def modality_weights(
        self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """(B, M) gates: sum to 1 over present modalities (absent: 0; none present: all 0)."""
        return self._gates(embeddings, present)[1].mean(-1)
