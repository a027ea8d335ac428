"""An ensemble as one medmodal model: members (deep models and classical learners over the same
processed inputs) with the weights chosen on validation, combined in ``forward`` (probabilities
averaged; survival: standardised risks averaged), so the Predictor, evaluation, calibration,
conformal sets, ``predict`` and the service see one model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medmodal.config import FeatureSpec, LearnerSpec, ModelConfig
from medmodal.ensemble.combine import member_view, to_logits
from medmodal.ensemble.members import BuildContext, classical_member, deep_member
from medmodal.ensemble.stack import Stack
from medmodal.errors import CheckpointError


class EnsembleModel(nn.Module):
    """``members`` with ``weights`` (summing to 1); ``about`` describes each (name, kind, spec,
    validation score); ``center`` / ``scale``: survival members' risk standardisation."""

    def __init__(self, model: ModelConfig, ctx: BuildContext, load_init: bool = True) -> None:
        super().__init__()
        self.config, self.ctx, self.load_init = model, ctx, load_init
        self.task = ctx.task
        self.members = nn.ModuleList()
        self.weights: list[float] = []
        self.about: list[dict[str, Any]] = []
        self.center: list[float] = []
        self.scale: list[float] = []
        self.candidates: list[dict[str, Any]] = []  # every member tried, chosen or not
        self.selection: dict[str, Any] = {}
        self.stack: Stack | None = None  # when set, it combines every member (not the weights)
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def set_members(self, members: list[nn.Module], weights: list[float], about: list[dict[str, Any]],
                    center: list[float] | None = None, scale: list[float] | None = None) -> None:  # fmt: skip
        """The chosen members (weight > 0) and what to record about them."""
        self.members = nn.ModuleList(members)
        self.weights = [float(w) for w in weights]
        self.about = about
        self.center = center or [0.0] * len(members)
        self.scale = scale or [1.0] * len(members)

    def forward(
        self, inputs: Any, present: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        if not self.members:
            raise RuntimeError("the ensemble has no member (it is not fitted)")
        if self.stack is not None:
            views = [member_view(m(inputs, present).float().cpu(), self.task).numpy()
                     for m in self.members]  # fmt: skip
            z = torch.from_numpy(self.stack.logits(views)).float()
            return z.to(self.anchor.device)
        total = None
        for w, m, c, s in zip(self.weights, self.members, self.center, self.scale, strict=True):
            if w <= 0:  # a member kept for comparison only (model.ensemble.keep_all)
                continue
            view = member_view(m(inputs, present).float().cpu(), self.task, c, s) * w
            total = view if total is None else total + view
        assert total is not None
        return to_logits(total, self.task).to(self.anchor.device)

    def describe(self) -> str:
        if self.stack is not None:
            names = ", ".join(a["name"] for a in self.about)
            return f"logistic-regression stack of {names}"
        return " + ".join(
            f"{w:.2f} x {a['name']}" for w, a in zip(self.weights, self.about, strict=True)
        )

    # -- state -------------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {"weights": self.weights, "about": self.about, "center": self.center,
                "scale": self.scale, "candidates": self.candidates, "selection": self.selection,
                "stack": None if self.stack is None else self.stack.state()}  # fmt: skip

    def set_extra_state(self, state: Any) -> None:
        self.weights = [float(w) for w in state["weights"]]
        self.center = [float(c) for c in state["center"]]
        self.scale = [float(s) for s in state["scale"]]
        self.about = list(state["about"])
        self.candidates = list(state.get("candidates", []))
        self.selection = dict(state.get("selection", {}))
        stack = state.get("stack")
        self.stack = None if stack is None else Stack.from_state(stack)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Rebuild the stored members (from ``about``), then load their weights."""
        extra = state_dict.get("_extra_state")
        if not isinstance(extra, dict) or "about" not in extra:
            raise CheckpointError("the stored ensemble lists no members")
        members = [self.build(a) for a in extra["about"]]
        self.members = nn.ModuleList(members)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def build(self, about: Mapping[str, Any]) -> nn.Module:
        """An empty member of the kind ``about`` describes."""
        if about["kind"] == "deep":
            return deep_member(self.config, self.ctx, load_init=False)
        learner = LearnerSpec.model_validate(about["learner"])
        features = {
            m: [FeatureSpec.model_validate(f) for f in fs] for m, fs in about["features"].items()
        }
        return classical_member(learner, features, self.ctx, int(about.get("seed") or 0))
