"""Grad-CAM (Selvaraju et al. 2017) on an encoder's last convolutional block, 1D, 2D or 3D.

The activations ``A`` (B, K, *spatial) of the block are weighted by their spatially averaged
gradients of the target score; ``ReLU(sum_k w_k A_k)`` is upsampled to the input size (linear,
bilinear or trilinear) and scaled to [0, 1]. The block is the one the encoder's registration
declares (``EncoderCapabilities.cam_layer``): baseline_cnn (its conv + ReLU), resnet18 / resnet50
(``layer4``), densenet121 (the final ReLU of the features), audio_cnn, cnn1d (the last conv
block's ReLU), resnet1d (the last stage). An encoder that declares none (a ViT has no
convolutional block) is a ConfigError naming those that do.
"""

from __future__ import annotations

import time
from typing import Any

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
from medmodal.explain.dense import dense_kind, draw_info, processed_input
from medmodal.explain.forward import Item, ModelScore
from medmodal.models.windows import WindowSpec, stitch
from medmodal.predictor import Predictor


def grad_cam(
    score: ModelScore, x: torch.Tensor, layer: nn.Module, windows: WindowSpec | None = None
) -> tuple[np.ndarray, torch.Tensor]:
    """(cam in [0, 1] of the input's spatial shape, target score) for a batch-of-one ``x``;
    ``windows``: the encoder ran on sliding windows, each window's map is placed where it came
    from (the mean where windows overlap)."""
    store: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
        store["a"] = out

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            x = x.detach().clone().requires_grad_(True)
            s = score(x)
            acts = store["a"]
            (grads,) = torch.autograd.grad(s.sum(), acts)
    finally:
        handle.remove()
    dims = tuple(range(2, acts.dim()))
    weights = grads.mean(dim=dims, keepdim=True)
    cam = F.relu((weights * acts).sum(dim=1, keepdim=True)).detach()
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(dims)]
    if windows is not None and cam.shape[0] != x.shape[0]:  # (W, 1, ...) per window
        size = (*x.shape[2:-1], windows.length)
        cam = F.interpolate(cam, size=size, mode=mode, align_corners=False)
        cam = stitch(cam.flatten(1, -2) if cam.dim() > 3 else cam, int(x.shape[-1]), windows)
        cam = cam.reshape(1, 1, *x.shape[2:])
    else:
        cam = F.interpolate(cam, size=tuple(x.shape[2:]), mode=mode, align_corners=False)
    cam = cam[0, 0]
    top = float(cam.max())
    cam = cam / top if top > 0 else cam
    return cam.cpu().numpy(), s.detach()


class GradCAM:
    """Grad-CAM for one modality (see the module doc)."""

    def __init__(self, predictor: Predictor, modality: str, layer: nn.Module) -> None:
        self.predictor, self.modality, self.layer = predictor, modality, layer

    def explain(self, item: Item, target: int) -> Attribution:
        t0 = time.perf_counter()
        p = self.predictor
        score = ModelScore(p.model, item, self.modality, p.label_map.task, target)
        x = item.inputs[self.modality]
        cam, s = grad_cam(score, x, self.layer, p.model.windows.get(self.modality))
        kind = dense_kind(p, self.modality)
        values = cam if kind != "signal" else np.broadcast_to(cam, x.shape[1:]).copy()
        return Attribution(
            self.modality,
            "gradcam",
            kind,
            values,
            background=processed_input(x),
            info={"target_score": float(s.reshape(-1)[0]), **draw_info(p, self.modality)},
            seconds=time.perf_counter() - t0,
        )


@METHODS.register("gradcam")
def gradcam(predictor: Predictor, modality: str | None) -> GradCAM:
    """Grad-CAM on the last convolutional block (image 2D/3D, spectrogram, signal)."""
    require_type(predictor, modality, "gradcam", ("image", "audio", "signal"))
    assert modality is not None
    caps = capabilities(predictor, modality)
    if caps.cam_layer is None:
        instead = "attention_rollout or " if caps.attention is not None else ""
        raise ConfigError(
            f"method 'gradcam' does not fit encoder {encoder_name(predictor, modality)!r} of "
            f"modality {modality!r}{caps.why_not('cam_layer')}: it needs an encoder that "
            "declares the convolutional block to weigh "
            f"({offered_by(predictor, modality, lambda c: c.cam_layer)}); "
            f"use {instead}integrated_gradients"
        )
    return GradCAM(predictor, modality, caps.cam_layer(predictor.model.encoders[modality]))
