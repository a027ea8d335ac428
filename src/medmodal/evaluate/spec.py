"""One frozen evaluation spec: every setting that decides how predictions are scored.

:class:`EvalSpec` is built once from the config (``evaluate`` section + seed) and the label map
(:meth:`EvalSpec.from_config`, the one reader of the ``evaluate`` section) and handed to the
metrics, the bootstrap, the subgroups, the report, cross-validation, the trainer's validation,
the service's model card and the gallery. A checkpoint holds the config and the label map, so its
spec is derived again when it is loaded (:attr:`medmodal.predictor.Predictor.eval_spec`), old
checkpoints included. Library callers without a config use :meth:`EvalSpec.for_task`: the
config model's defaults with named fields changed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from medmodal.config import ExperimentConfig
from medmodal.errors import ConfigError
from medmodal.evaluate._validate import TASKS, check_class_names, check_threshold
from medmodal.evaluate.calibration import DEFAULT_BINS, check_bins
from medmodal.options import parse_options

if TYPE_CHECKING:
    from collections.abc import Sequence


class Labels(Protocol):
    """What the spec reads of a label map (:class:`medmodal.data.manifest.LabelMap`, which sits
    above evaluate/ in the layers): the task, the class names and the survival time grid."""

    task: str
    classes: Sequence[Any]
    times: Sequence[float] | None


@dataclass(frozen=True)
class _Labels:
    task: str
    classes: Sequence[Any]
    times: Sequence[float] | None = None


CALIBRATIONS = ("none", "temperature")
CONFORMALS = ("none", "lac", "aps")


@dataclass(frozen=True)
class EvalSpec:
    """How predictions are scored (see the module docstring).

    ``classes``: names in index order (binary: ``[negative, positive]``; survival: ``["event"]``);
    ``threshold``: binary / multilabel positive when ``p > threshold``; ``calibrate``: the
    calibration method fitted on validation (``none`` | ``temperature``); ``conformal`` /
    ``coverage``: the conformal method (``none`` | ``lac`` | ``aps``) and its nominal coverage;
    ``ci``: the CI level; ``n_boot``: bootstrap resamples (0 = no CIs); ``seed``: of the
    resamples; ``ece_bins``: equal-width bins of the ECE; ``times``: survival, the grid of the
    predicted S(t) columns; ``eval_times``: survival, the times of the time-dependent AUC and
    calibration (None: quartiles of the event times); ``ablation``: metrics with each modality
    removed; ``gallery``: explanation gallery cases of each kind; ``report``: write report.html.
    """

    task: str
    classes: tuple[str, ...]
    threshold: float
    calibrate: str
    conformal: str
    coverage: float
    ci: float
    n_boot: int
    seed: int
    eval_times: tuple[float, ...] | None
    ablation: bool
    gallery: int
    report: bool
    ece_bins: int = DEFAULT_BINS  # not a config option
    times: tuple[float, ...] | None = None  # from the label map (survival)

    def __post_init__(self) -> None:
        if self.task not in (*TASKS, "survival"):
            raise ValueError(f"task must be one of {', '.join(TASKS)}, survival; got {self.task!r}")
        set_ = object.__setattr__  # frozen: normalise the values once, here
        set_(self, "classes", tuple(_class_names(self.classes, self.task)))
        set_(self, "threshold", check_threshold(self.threshold))
        set_(self, "ece_bins", check_bins(self.ece_bins))
        set_(self, "times", _floats(self.times))
        set_(self, "eval_times", _floats(self.eval_times))
        _check_choice("calibrate", self.calibrate, CALIBRATIONS)
        _check_choice("conformal", self.conformal, CONFORMALS)
        for name, value in (("ci", self.ci), ("coverage", self.coverage)):
            if not 0.0 < float(value) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), e.g. 0.95; got {value!r}")
        set_(self, "n_boot", _integer("n_boot", self.n_boot, minimum=0))
        set_(self, "gallery", _integer("gallery", self.gallery, minimum=0))
        set_(self, "seed", _integer("seed", self.seed, minimum=None))

    @property
    def positive(self) -> str | None:
        """The positive class of a binary task (``classes[1]``), else None."""
        return self.classes[1] if self.task == "binary" else None

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, label_map: Labels) -> EvalSpec:
        """The spec of a run: ``cfg.evaluate`` and ``cfg.seed`` with the label map's task,
        classes and (survival) time grid. The only place the ``evaluate`` section is read."""
        ev = cfg.evaluate
        return cls(
            task=label_map.task,
            classes=tuple(label_map.classes),
            threshold=ev.threshold,
            calibrate=ev.calibrate.method,
            conformal=ev.conformal.method,
            coverage=ev.conformal.coverage,
            ci=ev.ci,
            n_boot=ev.bootstrap,
            seed=cfg.seed,
            times=_floats(label_map.times),
            eval_times=_floats(ev.times),
            ablation=ev.ablation,
            gallery=ev.gallery,
            report=ev.report,
        )

    @classmethod
    def for_task(cls, task: str, classes: Sequence[Any], **options: Any) -> EvalSpec:
        """The config's defaults for ``task`` and ``classes`` with ``options`` (field names, e.g.
        ``n_boot=300, seed=7, threshold=0.3``) changed; an unknown option is a ConfigError
        naming the allowed ones."""
        allowed = sorted(f.name for f in fields(cls) if f.name not in ("task", "classes"))
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ConfigError(
                f"unknown evaluation option(s) {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(allowed)}"
            )
        base = cls.from_config(ExperimentConfig(), _Labels(task, [str(c) for c in classes]))
        return replace(base, **options)


def with_evaluate_options(cfg: ExperimentConfig, options: dict[str, Any]) -> ExperimentConfig:
    """``cfg`` with its ``evaluate`` section updated by ``options`` (validated: an unknown key or
    a bad value is a ConfigError naming it), e.g. ``{"bootstrap": 0}`` for one evaluation."""
    data = cfg.to_dict()
    data["evaluate"] = {**data["evaluate"], **options}
    return parse_options(ExperimentConfig, data, "config")


def _class_names(classes: Sequence[Any], task: str) -> list[str]:
    if task == "survival":
        return [str(c) for c in classes]
    return check_class_names(classes, task)


def _floats(values: Sequence[float] | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)


def _integer(name: str, value: Any, minimum: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
