"""Explanations: which parts of which input, and which modality, moved a prediction.

* :mod:`.base`: :class:`Attribution`, the ``METHODS`` registry and the checks that a method fits
  (what an encoder offers is read from its registration); :mod:`.methods`: every method
  registered, :func:`create_explainer`, :func:`default_methods`.
* :mod:`.gradcam`, :mod:`.rollout`, :mod:`.ig`, :mod:`.text`, :mod:`.tabular`, :mod:`.shapley`:
  the methods (``gradcam``, ``attention_rollout``, ``integrated_gradients``, ``occlusion``,
  ``shapley``); :mod:`.integrate`: Captum's path integral they share.
* :mod:`.forward`: one sample as a batch of one, and the target score the methods explain.
* :mod:`.draw`: PNG figures; :mod:`.run`: :func:`explain` (files); :mod:`.gallery`: the report's
  case gallery; :mod:`.sanity`: weight randomisation and deletion curves (Adebayo et al. 2018).
"""

from medmodal.explain.forward import Item, ModelScore, item_of, resolve_target
from medmodal.explain.methods import METHODS, Attribution, create_explainer, default_methods
from medmodal.explain.run import ExplainRequest, ExplainResult, explain, plan

__all__ = [
    "METHODS",
    "Attribution",
    "ExplainRequest",
    "ExplainResult",
    "Item",
    "ModelScore",
    "create_explainer",
    "default_methods",
    "explain",
    "item_of",
    "plan",
    "resolve_target",
]
