"""The optional explanation of one prediction, through :mod:`medmodal.explain` when importable.

Every modality the request gave is explained by its first default method that succeeds (Grad-CAM
or attention rollout for images, Integrated Gradients for notes and records, occlusion for frozen
sentence embeddings), from the very tensors the prediction used (no second decode), whatever
subset of the model's modalities was sent. The answer: ``modalities`` (one entry per given
modality: the method and a PNG, or why none applied and which methods exist for it) and, at the
top level, the first explained modality (images first) with, for a 2D image, ``overlay``: the
processed image and the heat map as separate PNGs of the same size, so a page can lay the map
over the image. ``{"available": False, "reason": ...}`` when nothing could be explained: a
prediction never fails for its explanation.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

from medmodal.predictor import Predictor

IMAGE_FIRST = ("image", "signal", "audio", "text", "tabular")


def explain_one(predictor: Predictor, prepared: Any, probs: Any) -> dict[str, Any]:
    """Explanations of every modality present in ``prepared`` (a serve Prepared)."""
    try:
        from medmodal.data.dataset import collate
        from medmodal.explain import create_explainer, default_methods, resolve_target
        from medmodal.explain.draw import draw, png_bytes
        from medmodal.explain.forward import Item
        from medmodal.predictor import to_device
    except ImportError:
        return {"available": False, "reason": "medmodal.explain is not part of this build"}
    batch = collate([prepared.sample])
    device = predictor.device
    item = Item(0, "input", to_device(batch["inputs"], device), to_device(batch["present"], device),
                prepared.raws, prepared.row, None)  # fmt: skip
    target = resolve_target(predictor.label_map, probs, None)
    kinds = {m: s.type for m, s in predictor.schema.modalities.items()}
    order = sorted(
        (m for m, p in prepared.sample["present"].items() if p),
        key=lambda m: IMAGE_FIRST.index(kinds[m]) if kinds[m] in IMAGE_FIRST else 99,
    )
    results = []
    for m in order:
        methods = default_methods(predictor, m)
        entry: dict[str, Any] = {"modality": m, "available": False, "methods": methods}
        for method in methods:
            try:
                att = create_explainer(method, predictor, m).explain(item, target)
                png = png_bytes(draw(att, f"{method} on {m}"))
            except Exception as exc:  # the next method, or a reason: never the prediction
                entry["reason"] = f"{method} failed ({type(exc).__name__})"
                continue
            entry = {"modality": m, "available": True, "method": method, "png_base64": _b64(png)}
            if att.kind == "image" and att.background is not None:
                entry["overlay"] = overlay(att.background, att.values)
            break
        results.append(entry)
    done = [r for r in results if r["available"]]
    if not done:
        reasons = "; ".join(f"{r['modality']}: {r.get('reason', 'no method')}" for r in results)
        return {"available": False, "reason": f"no explanation ({reasons})", "modalities": results}
    return {**done[0], "modalities": results}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def overlay(background: np.ndarray, values: np.ndarray) -> dict[str, Any]:
    """The processed image (grey or RGB) and the heat map (RGBA: Grad-CAM in jet at one alpha,
    a signed map red / blue with alpha growing with |value|) as base64 PNGs of one size."""
    from matplotlib import colormaps
    from PIL import Image

    from medmodal.explain.draw import _gray, _style

    under = (_gray(background) * 255).round().astype(np.uint8)
    cmap, norm = _style(values)
    v = np.asarray(values, dtype=float)
    rgba = colormaps[cmap](norm(v))
    rgba[..., 3] = 0.6 if cmap == "jet" else np.clip(np.abs(v) / max(norm.vmax or 1.0, 1e-12), 0, 1)
    heat = (rgba * 255).round().astype(np.uint8)
    out = {}
    for key, arr in (("image_png", under), ("heatmap_png", heat)):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG")
        out[key] = _b64(buf.getvalue())
    return {**out, "colormap": cmap, "signed": cmap != "jet"}
