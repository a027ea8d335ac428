"""Attention rollout (Abnar & Zuidema 2020) for image encoders that record their attention (the
ViT; ``EncoderCapabilities.attention``), 2D or 3D.

Each block's attention (averaged over heads) is mixed with the identity for the residual path,
``A = 0.5 * attention + 0.5 * I`` with rows renormalised, and the blocks are multiplied in order;
the encoder mean-pools its tokens, so a patch's relevance is the mean of its column of the
product. The patch grid is upsampled to the image and scaled to [0, 1]. Rollout follows the
information flow and ignores the class: the map is the same whichever class is explained.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medmodal.errors import ConfigError
from medmodal.explain.base import (
    METHODS,
    Attribution,
    capabilities,
    encoder_name,
    offered_by,
    require_type,
)
from medmodal.explain.dense import dense_kind, processed_input
from medmodal.explain.forward import Item, ModelScore
from medmodal.predictor import Predictor

Recorder = Callable[[nn.Module], AbstractContextManager[list[torch.Tensor]]]


def rollout(attentions: list[torch.Tensor]) -> torch.Tensor:
    """(N,) relevance of each token for the mean-pooled output, from (1, heads, N, N) maps."""
    n = attentions[0].shape[-1]
    eye = torch.eye(n, dtype=attentions[0].dtype, device=attentions[0].device)
    joint = eye
    for att in attentions:
        a = 0.5 * att[0].mean(0) + 0.5 * eye
        joint = (a / a.sum(-1, keepdim=True)) @ joint
    return joint.mean(0)


class AttentionRollout:
    """Attention rollout of an image encoder that records its attention (see the module doc)."""

    def __init__(self, predictor: Predictor, modality: str, record: Recorder) -> None:
        self.predictor, self.modality, self.record = predictor, modality, record

    @torch.no_grad()
    def explain(self, item: Item, target: int) -> Attribution:
        t0 = time.perf_counter()
        p, m = self.predictor, self.modality
        score = ModelScore(p.model, item, m, p.label_map.task, target)
        x = item.inputs[m]
        with self.record(p.model.encoders[m]) as maps:
            s = score(x)
        values = self._upsample(rollout(maps), tuple(x.shape[2:]))
        return Attribution(
            m, "attention_rollout", dense_kind(p, m), values, background=processed_input(x),
            info={"target_score": float(s[0]), "blocks": len(maps), "class_agnostic": True},
            seconds=time.perf_counter() - t0,
        )  # fmt: skip

    def _upsample(self, relevance: torch.Tensor, size: tuple[int, ...]) -> np.ndarray:
        """The (N,) patch relevance on the patch grid (square / cubic patches),
        upsampled to the image and scaled to [0, 1]."""
        n, dims = int(relevance.numel()), len(size)
        patch = round((math.prod(size) / n) ** (1 / dims))
        grid = [s // patch for s in size]
        mode = "bilinear" if dims == 2 else "trilinear"
        r = relevance.view(1, 1, *grid)
        r = F.interpolate(r, size=size, mode=mode, align_corners=False)[0, 0]
        r = r - r.min()
        top = float(r.max())
        return (r / top if top > 0 else r).cpu().numpy()


@METHODS.register("attention_rollout")
def attention_rollout(predictor: Predictor, modality: str | None) -> AttentionRollout:
    """Attention rollout of an image encoder that records its attention (class-agnostic)."""
    require_type(predictor, modality, "attention_rollout", ("image",))
    assert modality is not None
    caps = capabilities(predictor, modality)
    if caps.attention is None:
        raise ConfigError(
            f"method 'attention_rollout' does not fit encoder "
            f"{encoder_name(predictor, modality)!r} of modality {modality!r}"
            f"{caps.why_not('attention')}: it needs an encoder that records its attention "
            f"({offered_by(predictor, modality, lambda c: c.attention)})"
        )
    return AttentionRollout(predictor, modality, caps.attention)
