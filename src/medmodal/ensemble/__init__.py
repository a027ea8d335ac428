"""Ensembles chosen on validation: greedy selection (``select.py``), how members combine
(``combine.py``), the ensemble as one model (``model.py``), building any configured model
(``build.py``) and training the members (``train.py``, a run step)."""

__all__ = ["build", "combine", "members", "model", "select", "train"]
