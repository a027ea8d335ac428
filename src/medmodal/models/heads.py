"""Task heads: map the fused embedding to logits."""

from __future__ import annotations

from torch import nn

from medmodal.registry import Registry

HEADS: Registry[nn.Module] = Registry("head", context=("in_dim", "n_outputs"))


def n_outputs_for(task: str, n_classes: int, survival_bins: int | None = None) -> int:
    """Logit count: 1 for binary (sigmoid), K for multiclass / multilabel; survival: 1 (a Cox
    risk score) or ``survival_bins`` (one hazard logit per interval of a discrete-time model)."""
    if task == "survival":
        return survival_bins or 1
    if task == "binary":
        return 1
    return n_classes


@HEADS.register("linear")
def linear(in_dim: int, n_outputs: int, dropout: float = 0.0) -> nn.Module:
    """Dropout then one linear layer."""
    return (
        nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, n_outputs))
        if dropout
        else nn.Linear(in_dim, n_outputs)
    )


@HEADS.register("mlp")
def mlp(in_dim: int, n_outputs: int, hidden: int = 128, dropout: float = 0.1) -> nn.Module:
    """One hidden layer (GELU) then linear."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_outputs)
    )
