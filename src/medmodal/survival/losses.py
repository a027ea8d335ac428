"""Survival losses on a batch: Cox partial likelihood (Efron ties) and the logistic-hazard
(discrete-time) likelihood. Targets are (B, 2) float: time, event (0/1)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def cox_efron_nll(eta: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox log partial likelihood with Efron's tie correction, summed over events.

    For each distinct event time with ``d`` events ``D`` and risk set ``R`` (time >= it):
    ``sum_D eta - sum_{l<d} log(sum_R exp(eta) - l/d * sum_D exp(eta))``. Exact for ties, no
    B x B matrix (sorting and scatter sums), shifted by max(eta) for stability.
    """
    eta, time, event = eta.reshape(-1), time.reshape(-1), event.reshape(-1).to(eta.dtype)
    if not bool((event > 0).any()):
        return eta.sum() * 0.0
    shift = eta.detach().max()
    risk = torch.exp(eta - shift)
    uniq, inv = torch.unique(time, sorted=True, return_inverse=True)
    n = len(uniq)

    def by_time(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n, dtype=x.dtype, device=x.device).index_add(0, inv, x)

    at_time = by_time(risk)
    at_risk = torch.flip(torch.cumsum(torch.flip(at_time, [0]), 0), [0])  # sum over time >= t
    tied = by_time(risk * event)  # sum of exp(eta) over the events at t
    d = by_time(event)
    # Rank l (0..d-1) of each event among the events at its time.
    order = torch.argsort(inv, stable=True)
    cum = torch.cumsum(event[order], 0)
    before = torch.cumsum(d, 0) - d
    rank = torch.empty_like(cum)
    rank[order] = cum - 1 - before[inv[order]]
    ev = event > 0
    frac = rank[ev] / d[inv[ev]]
    denom = at_risk[inv[ev]] - frac * tied[inv[ev]]
    return -((eta[ev] - shift).sum() - torch.log(denom).sum())


class CoxLoss(nn.Module):
    """Mean over the batch's events of the negative Efron log partial likelihood."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        time, event = target[:, 0].float(), target[:, 1].float()
        return cox_efron_nll(logits[:, 0], time, event) / event.sum().clamp(min=1.0)


def interval_index(time: torch.Tensor, cuts: torch.Tensor) -> torch.Tensor:
    """Interval j = (cuts[j], cuts[j+1]] holding each time (times past the last cut: the last)."""
    k = len(cuts) - 1
    return (torch.searchsorted(cuts.contiguous(), time.contiguous(), right=False) - 1).clamp(
        0, k - 1
    )


class LogisticHazardLoss(nn.Module):
    """Discrete-time likelihood: each interval before a sample's own is survived (hazard 0); its
    own interval has hazard 1 for an event; a censored sample counts only the intervals before
    (censoring at the start of its interval). An event after the last cut is censored there."""

    def __init__(self, cuts: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("cuts", cuts.float())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        time, event = target[:, 0].float(), target[:, 1].float()
        k = logits.shape[1]
        idx = interval_index(time, self.cuts)
        event = torch.where(time > self.cuts[-1], torch.zeros_like(event), event)
        steps = torch.arange(k, device=logits.device)[None, :]
        own = steps == idx[:, None]
        weight = (steps < idx[:, None]).float() + own.float() * event[:, None]
        y = own.float() * event[:, None]
        bce = F.binary_cross_entropy_with_logits(logits.float(), y, reduction="none")
        return (bce * weight).sum(1).mean()
