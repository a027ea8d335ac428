"""Build the model a config's ``model`` section names: the deep model, a classical learner or
an ensemble of both (``medmodal.predictor.model_for`` calls :func:`composite_model` for the
last two)."""

from __future__ import annotations

from torch import nn

from medmodal.config import ModelConfig
from medmodal.ensemble.members import BuildContext, classical_member
from medmodal.ensemble.model import EnsembleModel
from medmodal.errors import ConfigError


def is_composite(model: ModelConfig) -> bool:
    """True when the section names a classical learner or an ensemble."""
    return model.learner is not None or model.ensemble is not None


def check_survival(model: ModelConfig, task: str) -> None:
    if task == "survival" and is_composite(model) and model.survival.method != "cox":
        raise ConfigError(
            "model.survival.method: classical learners and ensembles give one risk score; "
            "use cox (logistic_hazard is for a single deep model)"
        )


def composite_model(
    model: ModelConfig, ctx: BuildContext, seed: int, load_init: bool = True
) -> nn.Module:
    """A :class:`ClassicalModel` (``model.learner``) or an unfitted
    :class:`~medmodal.ensemble.model.EnsembleModel` (``model.ensemble``: its members are
    trained and chosen by :func:`medmodal.ensemble.train.fit_ensemble`, or rebuilt from a
    checkpoint's state)."""
    check_survival(model, ctx.task)
    if model.learner is not None:
        return classical_member(model.learner, model.features, ctx, seed)
    return EnsembleModel(model, ctx, load_init=load_init)
