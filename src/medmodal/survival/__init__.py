"""Time-to-event (survival) targets: labels, losses, the fitted Cox baseline / discrete-time
cuts, and what a checkpoint stores of them."""

from medmodal.survival.labels import encode_survival, time_grid
from medmodal.survival.losses import CoxLoss, LogisticHazardLoss, cox_efron_nll
from medmodal.survival.model import SurvivalModel, breslow, check_events, step_at

__all__ = [
    "CoxLoss",
    "LogisticHazardLoss",
    "SurvivalModel",
    "breslow",
    "check_events",
    "cox_efron_nll",
    "encode_survival",
    "step_at",
    "time_grid",
]
