"""Building one member of any kind for given inputs: the deep model of a config's ``model``
section, or a classical learner on its features."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from medmodal.classical.model import ClassicalModel
from medmodal.config import ModelConfig
from medmodal.models import build_model


@dataclass
class BuildContext:
    """What every member is built from: modality types, fitted processors (and their info),
    the task and its output count."""

    modality_types: Mapping[str, str]
    infos: Mapping[str, dict[str, Any]]
    processors: Mapping[str, Any]
    task: str
    n_outputs: int


def deep_member(model: ModelConfig, ctx: BuildContext, load_init: bool = True) -> nn.Module:
    """The section's deep model (encoders, fusion, head) for these inputs."""
    return build_model(ctx.modality_types, ctx.infos, model.deep_only(), task=ctx.task,
                       n_outputs=ctx.n_outputs, load_init=load_init)  # fmt: skip


def classical_member(
    learner: Any, features: Mapping[str, Any], ctx: BuildContext, seed: int
) -> ClassicalModel:
    return ClassicalModel(ctx.modality_types, ctx.infos, ctx.processors, learner, features,
                          task=ctx.task, n_outputs=ctx.n_outputs, seed=seed)  # fmt: skip
