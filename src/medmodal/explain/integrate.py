"""Captum's Integrated Gradients along a straight path, shared by the dense, token and tabular
cases (:mod:`.ig`, :mod:`.text`, :mod:`.tabular`)."""

from __future__ import annotations

from typing import Any

import torch

from medmodal.errors import ConfigError
from medmodal.explain.forward import ModelScore


def captum_attr() -> Any:
    """``captum.attr``, or a ConfigError saying how to install it."""
    try:
        import captum.attr
    except ImportError:
        raise ConfigError(
            "integrated_gradients needs Captum: pip install 'medmodal[explain]'"
        ) from None
    return captum.attr


def integrate(
    score: ModelScore,
    x: torch.Tensor,
    steps: int,
    baseline: torch.Tensor | None = None,
    batch: int = 32,
) -> tuple[torch.Tensor, float]:
    """(attributions shaped like ``x``, convergence delta) of ``score`` along the straight
    path from ``baseline`` (default zeros) to ``x``."""
    ig = captum_attr().IntegratedGradients(score)
    base = torch.zeros_like(x) if baseline is None else baseline
    with torch.enable_grad():
        attr, delta = ig.attribute(
            x.detach().float(),
            baselines=base,
            n_steps=steps,
            internal_batch_size=batch,
            return_convergence_delta=True,
        )
    return attr.detach(), float(delta.abs().max())
