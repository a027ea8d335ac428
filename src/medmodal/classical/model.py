"""A classical learner as a medmodal model: the same ``forward(inputs, present) -> logits`` as
:class:`~medmodal.models.MultimodalModel`, so the Predictor, evaluation, calibration, conformal
sets, the report, ``predict`` and the service use it unchanged.

Each modality's processed batch goes through its feature extractors (fitted on the training
split only); absent modalities give NaN features (mean-imputed for learners that need it) and,
with several modalities, a presence column each. The learner's probabilities come out as logits
(binary / multilabel: log-odds; multiclass: log-probabilities; survival: the log-risk), so
temperature scaling and every later step see what they see for a deep model. Everything fitted
travels in the module's state dict (``_extra_state``: plain values and skops bytes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from medmodal.classical import persist
from medmodal.classical.features import FEATURES, FeatureExtractor, check_type, default_features
from medmodal.classical.learners import LEARNERS, check_learner, learner_capabilities
from medmodal.config import FeatureEntry, FeatureSpec, LearnerSpec
from medmodal.errors import CheckpointError, ConfigError

EPS = 1e-6


def learner_of(spec: str | LearnerSpec) -> tuple[str, dict[str, Any]]:
    """(name, options) of a learner written as a name or a spec."""
    if isinstance(spec, str):
        return spec, {}
    return spec.name, spec.options()


def feature_list(entry: FeatureEntry) -> list[tuple[str, dict[str, Any]]]:
    """(name, options) of each extractor a ``model.features`` entry names."""
    items = entry if isinstance(entry, list) else [entry]
    return [(i, {}) if isinstance(i, str) else (i.name, i.options()) for i in items]


def plan_features(
    modality_types: Mapping[str, str],
    infos: Mapping[str, dict[str, Any]],
    features: Mapping[str, FeatureEntry],
) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """The extractors of every modality: named in ``features`` or its type's defaults; an
    unknown modality, extractor or option, or one of the wrong type, is a ConfigError."""
    unknown = sorted(set(features) - set(modality_types))
    if unknown:
        raise ConfigError(
            f"model.features names {unknown}, not modalities of this data "
            f"({', '.join(modality_types)})"
        )
    out = {}
    for m, mtype in modality_types.items():
        chosen = feature_list(features[m]) if m in features else None
        if chosen is None:
            chosen = [(n, {}) for n in default_features(mtype, infos.get(m, {}))]
        for name, opts in chosen:
            FEATURES.entry(name)
            check_type(name, mtype, m)
            FEATURES.parse(name, opts)
        if not chosen:
            raise ConfigError(f"model.features.{m}: no feature extractor for {mtype} inputs")
        out[m] = chosen
    return out


class ClassicalModel(nn.Module):
    """Feature extractors per modality + one fitted classical learner."""

    def __init__(
        self,
        modality_types: Mapping[str, str],
        infos: Mapping[str, dict[str, Any]],
        processors: Mapping[str, Any],
        learner: str | LearnerSpec,
        features: Mapping[str, FeatureEntry],
        *,
        task: str,
        n_outputs: int,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.learner_name, self.learner_options = learner_of(learner)
        check_learner(self.learner_name, task)
        LEARNERS.parse(self.learner_name, self.learner_options)
        self.task, self.n_outputs, self.seed = task, n_outputs, seed
        self.plan = plan_features(modality_types, infos, features)
        self.extractors: dict[str, list[FeatureExtractor]] = {
            m: [FEATURES.create(n, o, info=dict(infos.get(m, {})), processor=processors.get(m))
                for n, o in specs]
            for m, specs in self.plan.items()
        }  # fmt: skip
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)  # its device
        self.estimator: Any = None
        self.classes_: list[int] = []

    @property
    def modalities(self) -> list[str]:
        return list(self.extractors)

    def describe(self) -> str:
        feats = "; ".join(f"{m}: {', '.join(n for n, _ in s)}" for m, s in self.plan.items())
        return f"{self.learner_name} on {feats}"

    # -- features --------------------------------------------------------------------------
    def features(
        self, inputs: Mapping[str, Any], present: Mapping[str, torch.Tensor]
    ) -> np.ndarray:
        """(B, F) float32: each modality's features (NaN where absent), then with several
        modalities one presence column each."""
        parts, flags = [], []
        for m, extractors in self.extractors.items():
            pres = present[m].detach().cpu().numpy().astype(bool)
            x = _cpu(inputs[m])
            for e in extractors:
                f = np.asarray(e.transform(x), dtype=np.float32)
                f[~pres] = np.nan
                parts.append(f)
            flags.append(pres.astype(np.float32))
        if len(self.extractors) > 1:
            parts.append(np.stack(flags, axis=1))
        return np.concatenate(parts, axis=1)

    def fit_features(self, inputs: Mapping[str, Any], present: Mapping[str, torch.Tensor]) -> None:
        """Fit every extractor on the training rows where its modality is present."""
        for m, extractors in self.extractors.items():
            pres = present[m].cpu().numpy().astype(bool)
            if not pres.any():
                raise ConfigError(f"modality {m!r}: no training row has it; nothing to fit on")
            for e in extractors:
                e.fit(_cpu(inputs[m]), pres)

    def feature_names(self) -> list[str]:
        out = [f"{m}:{n}" for m, ex in self.extractors.items() for e in ex for n in e.names()]
        if len(self.extractors) > 1:
            out += [f"present:{m}" for m in self.extractors]
        return out

    # -- learner ---------------------------------------------------------------------------
    def fit_learner(self, x: np.ndarray, y: np.ndarray) -> None:
        from medmodal.classical.fit import fit_estimator

        self.estimator, self.classes_ = fit_estimator(self, x, y)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """(B, n_outputs) logits of feature rows."""
        from medmodal.classical.fit import estimator_logits

        if self.estimator is None:
            raise RuntimeError(f"classical model {self.describe()} is not fitted")
        return estimator_logits(self, x)

    def forward(
        self,
        inputs: Mapping[str, Any] | torch.Tensor,
        present: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if not isinstance(inputs, Mapping):
            inputs = {self.modalities[0]: inputs}
        if present is None:
            b = _batch(next(iter(inputs.values())))
            present = {m: torch.ones(b, dtype=torch.bool) for m in self.modalities}
        z = self.scores(self.features(inputs, present))
        return torch.from_numpy(z.astype(np.float32)).to(self.anchor.device)

    # -- state -----------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {
            "learner": self.learner_name,
            "estimator": None if self.estimator is None else persist.dumps(self.estimator),
            "classes": list(self.classes_),
            "extractors": {m: [e.state_dict() for e in ex] for m, ex in self.extractors.items()},
        }

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or state.get("learner") != self.learner_name:
            raise CheckpointError(
                f"the stored classical model is not a {self.learner_name!r} learner"
            )
        for m, ex in self.extractors.items():
            for e, s in zip(ex, state["extractors"][m], strict=True):
                e.load_state_dict(s)
        blob = state["estimator"]
        self.estimator = None if blob is None else persist.loads(blob, "classical learner")
        self.classes_ = [int(c) for c in state["classes"]]

    @property
    def capabilities(self) -> Any:
        return learner_capabilities(self.learner_name)


def _cpu(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, Mapping):
        return {k: _cpu(v) for k, v in x.items()}
    return x


def _batch(x: Any) -> int:
    return _batch(next(iter(x.values()))) if isinstance(x, Mapping) else int(x.shape[0])


def is_classical(model: nn.Module) -> bool:
    return isinstance(model, ClassicalModel)


__all__ = ["ClassicalModel", "FeatureSpec", "feature_list", "is_classical", "plan_features"]
