"""Early checks of a config's component options, before any data is read."""

from __future__ import annotations

from medmodal.config import EncoderSpec, ExperimentConfig
from medmodal.errors import ConfigError
from medmodal.fusion import FUSIONS
from medmodal.models.encoders import ENCODERS
from medmodal.models.heads import HEADS
from medmodal.options import parse_options


def check_components(cfg: ExperimentConfig) -> None:
    """Every named encoder, the fusion and the head exist and their options fit their signatures
    (a misspelled option is a ConfigError now, not after the data has been read)."""
    m = cfg.model
    for modality, spec in m.encoders.items():
        if spec.name is not None:
            where = f"model.encoders.{modality} ({spec.name})"
            try:
                parse_options(ENCODERS.options_model(spec.name), spec.options(), where)
            except ConfigError as exc:
                if "unknown option" not in str(exc):
                    raise
                own = ", ".join(EncoderSpec.model_fields)
                raise ConfigError(f"{exc}; or one of the encoder spec's own keys: {own}") from None
    parse_options(
        FUSIONS.options_model(m.fusion.name), m.fusion.options(), f"fusion {m.fusion.name!r}"
    )
    parse_options(HEADS.options_model(m.head.name), m.head.options(), f"head {m.head.name!r}")
    check_classical(cfg)


def check_classical(cfg: ExperimentConfig) -> None:
    """Every named learner and feature extractor exists and takes the options given (the task
    and the modalities are checked once the data is read)."""
    from medmodal.classical.features import FEATURES
    from medmodal.classical.learners import LEARNERS
    from medmodal.classical.model import feature_list, learner_of

    m = cfg.model
    learners = [m.learner] if m.learner is not None else []
    features = [m.features]
    if m.ensemble is not None:
        learners += list(m.ensemble.learners or [])
        learners += [s.learner for s in m.ensemble.members if s.learner is not None]
        features += [s.features for s in m.ensemble.members]
    for spec in learners:
        name, opts = learner_of(spec)
        LEARNERS.parse(name, opts)
    for group in features:
        for modality, entry in group.items():
            for name, opts in feature_list(entry):
                FEATURES.entry(name)
                parse_options(
                    FEATURES.options_model(name), opts, f"model.features.{modality} ({name})"
                )
