"""Models: encoders, heads and the MultimodalModel that joins them."""

from medmodal.models import encoders  # noqa: F401  (registers encoders)
from medmodal.models.heads import HEADS
from medmodal.models.model import MultimodalModel, build_model, create_model

__all__ = ["HEADS", "MultimodalModel", "build_model", "create_model"]
