"""Training presets: ``best`` (the config's deep model, several seeds, and the task's classical
learners, ensembled on validation) and ``fast`` (one model: the config without an ensemble)."""

from __future__ import annotations

from typing import Any

from medmodal.config import EnsembleConfig, ExperimentConfig, load_config
from medmodal.errors import ConfigError

PRESETS = ("best", "fast")


def apply_preset(
    config: Any, overrides: list[str] | None, preset: str | None, time_budget: float | None = None
) -> tuple[Any, list[str] | None]:
    """The config source and overrides to run: unchanged without a preset, else the loaded
    config with the preset applied (``time_budget`` in seconds: the ensemble's)."""
    if preset is None and time_budget is None:
        return config, overrides
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    cfg = load_config(config, overrides)
    model = cfg.model
    if preset == "best":
        if model.learner is not None:
            raise ConfigError(
                "--preset best ensembles the config's deep model with classical learners; this "
                "config names one classical model.learner (drop it, or train it as it is)"
            )
        model = model.model_copy(update={"ensemble": model.ensemble or EnsembleConfig()})
    elif preset == "fast":
        model = model.model_copy(update={"ensemble": None})
    if time_budget is not None:
        if model.ensemble is None:
            raise ConfigError(
                "--time-budget limits an ensemble's members: use it with --preset best"
            )
        ens = model.ensemble.model_copy(update={"time_budget": float(time_budget)})
        model = model.model_copy(update={"ensemble": ens})
    out = cfg.model_copy(update={"model": model})
    return load_config(out.to_dict()), None


def preset_of(cfg: ExperimentConfig) -> str:
    """What kind of model a config trains (for messages): ensemble, classical or deep."""
    if cfg.model.ensemble is not None:
        return "ensemble"
    return "classical" if cfg.model.learner is not None else "deep"
