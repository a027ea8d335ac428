"""Classical learners as medmodal models: per-modality feature extractors (``features/``),
scikit-learn / LightGBM / scikit-survival learners (``learners.py``), the model that joins them
(``model.py``), their fitting (``fit.py``), safe storage (``persist.py``) and ONNX (``onnx.py``).

Importing :mod:`medmodal.classical.model` registers every extractor and learner; this
``__init__`` imports nothing heavy."""

__all__ = ["features", "fit", "learners", "model", "onnx", "persist"]
