"""Late fusion: one head per modality, predictions averaged over the present modalities."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from medmodal.fusion.base import FUSIONS, Fusion, FusionOutput, stack_mask
from medmodal.fusion.pooling import zero_absent


@FUSIONS.register("late")
class LateFusion(Fusion):
    """One head per modality; logits or probabilities averaged over present modalities.

    Per-modality heads ``D_m -> n_outputs`` are combined over present modalities:

    * ``combine="logits"``: masked mean of the logits.
    * ``combine="probs"``: masked mean of probabilities, returned as logits:
      ``log(mean softmax)`` for a multiclass task with K > 1 outputs (so its softmax
      is the mean of the softmaxes), else ``logit(mean sigmoid)`` per output (binary,
      multilabel). Computed with log-sum-exp, so it is exact and finite.

    A row with no present modality yields zero logits. The output carries every modality's
    own logits; :meth:`auxiliary_loss` trains each head on the rows where its modality was
    present (deep supervision, weighted by ``train.aux_loss_weight``).
    """

    outputs_logits = True
    ignores_absent = True

    def __init__(
        self,
        in_dims: dict[str, int],
        n_outputs: int,
        task: str,
        combine: Literal["logits", "probs"] = "logits",
        hidden: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_dims, n_outputs, task)
        if combine == "probs" and task == "survival":
            raise ValueError("combine='probs' has no meaning for a survival risk; use 'logits'")
        self.combine = combine
        self.heads = nn.ModuleDict(
            {m: _head(d, n_outputs, hidden, dropout) for m, d in in_dims.items()}
        )
        self.out_dim = n_outputs

    def modality_logits(
        self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """(B, n_outputs) logits of each modality's own head (absent rows: head of zeros)."""
        return {m: self.heads[m](zero_absent(embeddings[m], present[m])) for m in self.modalities}

    def forward(
        self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
    ) -> FusionOutput:
        per = self.modality_logits(embeddings, present)
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
        return FusionOutput(torch.where(any_present, out, 0.0), present, per)

    def auxiliary_loss(
        self, output: FusionOutput, target: torch.Tensor, loss_fn: nn.Module
    ) -> torch.Tensor | None:
        """Mean over modalities of ``loss_fn`` on each head's logits, present rows only."""
        losses = []
        for m, logits in output.modality_logits.items():
            rows = output.present[m].bool()
            if bool(rows.any()):
                losses.append(loss_fn(logits[rows].float(), target[rows]))
        return torch.stack(losses).mean() if losses else None


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
