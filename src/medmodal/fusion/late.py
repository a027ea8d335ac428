"""Late fusion: one head per modality, predictions averaged over the present modalities."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medmodal.fusion.base import FUSIONS, Fusion, stack_mask
from medmodal.fusion.pooling import zero_absent

TASKS = ("binary", "multiclass", "multilabel", "survival")


class LateFusion(Fusion):
    """Per-modality heads ``D_m -> n_outputs`` combined over present modalities.

    * ``combine="logits"``: masked mean of the logits.
    * ``combine="probs"``: masked mean of probabilities, returned as logits:
      ``log(mean softmax)`` for a multiclass task with K > 1 outputs (so its softmax
      is the mean of the softmaxes), else ``logit(mean sigmoid)`` per output (binary,
      multilabel). Computed with log-sum-exp, so it is exact and finite.

    A row with no present modality yields zero logits. The per-modality logits of the
    last forward are kept in ``last_modality_logits`` (with ``last_present``) for an
    auxiliary per-modality loss; ``modality_logits()`` recomputes them.
    """

    outputs_logits = True
    ignores_absent = True

    def __init__(
        self,
        in_dims: dict[str, int],
        n_outputs: int,
        combine: str = "logits",
        task: str = "multiclass",
        hidden: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_dims, n_outputs)
        if combine not in ("logits", "probs"):
            raise ValueError(f"combine must be 'logits' or 'probs', not {combine!r}")
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, not {task!r}")
        if combine == "probs" and task == "survival":
            raise ValueError("combine='probs' has no meaning for a survival risk; use 'logits'")
        self.combine, self.task = combine, task
        self.heads = nn.ModuleDict(
            {m: _head(d, n_outputs, hidden, dropout) for m, d in in_dims.items()}
        )
        self.out_dim = n_outputs
        self.last_modality_logits: dict[str, torch.Tensor] = {}
        self.last_present: dict[str, torch.Tensor] = {}

    def modality_logits(
        self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """(B, n_outputs) logits of each modality's own head (absent rows: head of zeros)."""
        return {m: self.heads[m](zero_absent(embeddings[m], present[m])) for m in self.modalities}

    def forward(
        self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        per = self.modality_logits(embeddings, present)
        self.last_modality_logits = per
        self.last_present = {m: present[m] for m in self.modalities}
        logits = torch.stack([per[m] for m in self.modalities], dim=1)  # (B, M, K)
        mask = stack_mask(present, self.modalities).bool()  # (B, M)
        any_present = mask.any(1, keepdim=True)  # (B, 1)
        # Rows with nothing present are computed as if all were present, then zeroed,
        # so no NaN is produced in the forward or the backward pass.
        m3 = (mask | ~any_present).unsqueeze(-1)  # (B, M, 1)
        if self.combine == "logits":
            n = m3.sum(1).to(logits.dtype)
            out = torch.where(m3, logits, 0.0).sum(1) / n
        elif self.task == "multiclass" and self.n_outputs > 1:
            out = _masked_logmeanexp(F.log_softmax(logits, dim=-1), m3)
        else:
            out = _masked_logmeanexp(F.logsigmoid(logits), m3) - _masked_logmeanexp(
                F.logsigmoid(-logits), m3
            )
        return torch.where(any_present, out, 0.0)

    def __getstate__(self) -> dict[str, Any]:
        # Tensors from the last forward are graph outputs: deepcopy/pickle cannot copy them.
        state = super().__getstate__()
        state["last_modality_logits"], state["last_present"] = {}, {}
        return state


def _head(d: int, k: int, hidden: int | None, dropout: float) -> nn.Module:
    if hidden:
        return nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(d, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, k),
        )
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(d, k))


def _masked_logmeanexp(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log(mean over masked M of exp(x)); x (B, M, K), mask (B, M, 1) with >= 1 True per row."""
    n = mask.sum(1).to(x.dtype)
    return torch.logsumexp(torch.where(mask, x, float("-inf")), dim=1) - torch.log(n)


@FUSIONS.register("late")
def late(in_dims: dict[str, int], n_outputs: int, **kw) -> Fusion:
    """One head per modality; logits or probabilities averaged over present modalities."""
    return LateFusion(in_dims, n_outputs, **kw)
