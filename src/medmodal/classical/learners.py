"""Classical learners by name: scikit-learn, LightGBM and scikit-survival estimators.

Registered like encoders (:data:`LEARNERS`, context ``task`` and ``seed``, typed options), each
with :class:`LearnerCapabilities`: the tasks it takes, whether its inputs are imputed and
standardised first, its ONNX converter and, for survival, the scale of its risk score.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from medmodal.errors import ConfigError
from medmodal.options import Strict
from medmodal.registry import Registry

LEARNERS: Registry[Any] = Registry("learner", context=("task", "seed"))
CLASSIFY = ("binary", "multiclass", "multilabel")
DEFAULT_LEARNERS = {
    "binary": ("logistic", "lightgbm", "svm"),
    "multiclass": ("logistic", "lightgbm", "svm"),
    "multilabel": ("logistic", "lightgbm"),
    "survival": ("coxph", "rsf", "gb_survival"),
}
Weights = Literal["none", "balanced"]


@dataclass(frozen=True)
class LearnerCapabilities:
    """``tasks`` it fits; ``scaled``: inputs mean-imputed and standardised first (else NaN is
    passed through to a learner that handles it, or median-imputed for survival trees);
    ``onnx``: the converter package (None: no converter); ``risk``: survival scores are
    ``log`` hazards or ``positive`` (cumulative hazards; medmodal takes their log)."""

    tasks: tuple[str, ...]
    scaled: bool = False
    onnx: str | None = None
    risk: Literal["log", "positive"] = "log"
    handles_nan: bool = False


def threads() -> int:
    """Threads for a learner: MEDMODAL_THREADS, else torch's setting."""
    import torch

    return int(os.environ.get("MEDMODAL_THREADS", torch.get_num_threads()))


def _weights(w: Weights) -> str | None:
    return None if w == "none" else "balanced"


@LEARNERS.register("logistic", capabilities=LearnerCapabilities(CLASSIFY, True, "skl2onnx"))
def logistic(
    task: str, seed: int, C: float = 0.1, class_weight: Weights = "none", max_iter: int = 500
) -> Any:
    """L2-regularised logistic regression on standardised features (C 0.1: many features)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, class_weight=_weights(class_weight), max_iter=max_iter)


class LightGBMOptions(Strict):
    """LightGBM's options (``model.learner: {name: lightgbm, n_estimators: 500, ...}``)."""

    n_estimators: int = Field(default=300, ge=1)
    learning_rate: float = Field(default=0.05, gt=0)
    num_leaves: int = Field(default=15, ge=2)
    min_child_samples: int = Field(default=10, ge=1)
    subsample: float = Field(default=0.8, gt=0, le=1)
    colsample_bytree: float = Field(default=0.5, gt=0, le=1)
    reg_lambda: float = Field(default=1.0, ge=0)
    class_weight: Weights = "none"


@LEARNERS.register(
    "lightgbm",
    options=LightGBMOptions,
    capabilities=LearnerCapabilities(CLASSIFY, onnx="onnxmltools", handles_nan=True),
)
def lightgbm(task: str, seed: int, options: LightGBMOptions) -> Any:
    """LightGBM gradient-boosted trees (missing values handled natively)."""
    try:
        from lightgbm import LGBMClassifier
    except ImportError:
        raise ConfigError(
            "learner lightgbm needs LightGBM: pip install 'medmodal[classical]'"
        ) from None
    o = options
    return LGBMClassifier(
        n_estimators=o.n_estimators, learning_rate=o.learning_rate, num_leaves=o.num_leaves,
        min_child_samples=o.min_child_samples, subsample=o.subsample, subsample_freq=1,
        colsample_bytree=o.colsample_bytree, reg_lambda=o.reg_lambda,
        class_weight=_weights(o.class_weight), random_state=seed, n_jobs=threads(),
        deterministic=True, force_row_wise=True, verbose=-1,
    )  # fmt: skip


@LEARNERS.register(
    "hist_gb", capabilities=LearnerCapabilities(CLASSIFY, onnx="skl2onnx", handles_nan=True)
)
def hist_gb(
    task: str,
    seed: int,
    max_iter: int = 300,
    learning_rate: float = 0.05,
    max_leaf_nodes: int = 15,
    l2_regularization: float = 1.0,
    class_weight: Weights = "none",
) -> Any:
    """scikit-learn's histogram gradient boosting (missing values handled natively)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(
        max_iter=max_iter, learning_rate=learning_rate, max_leaf_nodes=max_leaf_nodes,
        l2_regularization=l2_regularization, class_weight=_weights(class_weight),
        early_stopping=False, random_state=seed,
    )  # fmt: skip


@LEARNERS.register("svm", capabilities=LearnerCapabilities(CLASSIFY[:2], True, "skl2onnx"))
def svm(
    task: str,
    seed: int,
    C: float = 1.0,
    gamma: float | Literal["scale", "auto"] = "scale",
    class_weight: Weights = "none",
    max_train: int = 10000,
) -> Any:
    """RBF support-vector machine with Platt probabilities (sigmoid on 5-fold decision values
    of the training rows); fitted on at most ``max_train``
    training rows (a stratified, seeded subsample: its cost grows with the square of the rows)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC

    if max_train < 10:
        raise ValueError("max_train must be at least 10")
    base = SVC(C=C, gamma=gamma, class_weight=_weights(class_weight), random_state=seed)
    return CalibratedClassifierCV(base, method="sigmoid", cv=5, ensemble=False)


@LEARNERS.register("coxph", capabilities=LearnerCapabilities(("survival",), True))
def coxph(
    task: str, seed: int, alpha: float = 0.01, ties: Literal["breslow", "efron"] = "efron"
) -> Any:
    """Cox proportional hazards (ridge penalty ``alpha``) on standardised features."""
    from sksurv.linear_model import CoxPHSurvivalAnalysis

    return CoxPHSurvivalAnalysis(alpha=alpha, ties=ties, n_iter=200)


@LEARNERS.register("rsf", capabilities=LearnerCapabilities(("survival",), risk="positive"))
def rsf(
    task: str,
    seed: int,
    n_estimators: int = 100,
    min_samples_leaf: int = 15,
    max_features: float | Literal["sqrt", "log2"] | None = "sqrt",
) -> Any:
    """Random survival forest (scikit-survival; risk scores only: low_memory)."""
    from sksurv.ensemble import RandomSurvivalForest

    return RandomSurvivalForest(
        n_estimators=n_estimators, min_samples_leaf=min_samples_leaf, max_features=max_features,
        random_state=seed, n_jobs=threads(), low_memory=True,
    )  # fmt: skip


@LEARNERS.register("gb_survival", capabilities=LearnerCapabilities(("survival",)))
def gb_survival(
    task: str,
    seed: int,
    n_estimators: int = 100,
    learning_rate: float = 0.1,
    max_depth: int = 3,
    subsample: float = 1.0,
) -> Any:
    """Gradient-boosted Cox model on regression trees (scikit-survival)."""
    from sksurv.ensemble import GradientBoostingSurvivalAnalysis

    return GradientBoostingSurvivalAnalysis(
        n_estimators=n_estimators, learning_rate=learning_rate, max_depth=max_depth,
        subsample=subsample, random_state=seed,
    )  # fmt: skip


def learner_capabilities(name: str) -> LearnerCapabilities:
    return LEARNERS.capabilities(name)


def check_learner(name: str, task: str) -> None:
    """ConfigError unless ``name`` is a learner that fits ``task`` (naming those that do)."""
    caps = learner_capabilities(name)
    if task not in caps.tasks:
        fits = [n for n in LEARNERS.names() if task in learner_capabilities(n).tasks]
        raise ConfigError(
            f"learner {name!r} does not fit a {task} target; learners for {task}: {', '.join(fits)}"
        )


def exporting(task: str) -> list[str]:
    """Learners of ``task`` that have an ONNX converter."""
    return [n for n in LEARNERS.names() if task in learner_capabilities(n).tasks
            and learner_capabilities(n).onnx]  # fmt: skip
