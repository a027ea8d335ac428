"""The optional explanation of one prediction, through :mod:`medmodal.explain` when importable.

Returns ``{"available": False, "reason": ...}`` when the package, a method for the model or the
explanation itself is not available, never an error: a prediction never fails for its explanation.
"""

from __future__ import annotations

import base64
from typing import Any

from medmodal.predictor import Predictor


def explain_one(predictor: Predictor, row: dict[str, Any], probs: Any) -> dict[str, Any]:
    """The top explanation of the present modalities as a PNG (base64), if available."""
    try:
        from medmodal.explain import create_explainer, default_methods, item_of, resolve_target
        from medmodal.explain.draw import draw, png_bytes
    except ImportError:
        return {"available": False, "reason": "medmodal.explain is not part of this build"}
    try:
        from medmodal.data.dataset import MultimodalDataset

        ds = MultimodalDataset([row], ["input"], ["input"], None, predictor.processors, None)
        ds.load().finalize()
        item = item_of(ds, 0, predictor.device)
        target = resolve_target(predictor.label_map, probs, None)
        for m in predictor.processors:
            if not bool(item.present[m][0]):
                continue
            for method in default_methods(predictor, m):
                att = create_explainer(method, predictor, m).explain(item, target)
                png = png_bytes(draw(att, f"{method} on {m}"))
                data = base64.b64encode(png).decode("ascii")
                return {"available": True, "modality": m, "method": method, "png_base64": data}
        return {"available": False, "reason": "no explanation method fits the inputs given"}
    except Exception as exc:  # an explanation must never fail the prediction
        return {"available": False, "reason": f"explanation failed: {type(exc).__name__}"}
