"""The experiment config: one pydantic model, YAML in, saved inside every checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import ConfigDict, Field, model_validator

from medmodal.errors import ConfigError
from medmodal.options import Strict, parse_options


class DataConfig(Strict):
    """Where samples come from: a manifest + schema, or a built-in dataset that writes them."""

    manifest: str | None = None
    schema_: str | dict[str, Any] | None = Field(default=None, alias="schema")
    root: str | None = None
    dataset: str | None = None
    dataset_options: dict[str, Any] = Field(default_factory=dict)
    data_dir: str | None = None
    modalities: list[str] | None = Field(
        default=None, description="use only these schema modalities"
    )
    val_fraction: float = Field(default=0.1, ge=0, lt=1)
    test_fraction: float = Field(default=0.2, ge=0, lt=1)
    stratify: bool = True
    skip_bad: bool = False
    audit: bool = Field(
        default=True, description="look for duplicate inputs across patients and splits"
    )


class ComponentSpec(Strict):
    """A registered component by ``name``; every other key is one of its options, checked
    against the component's signature by its registry (a misspelled key is a ConfigError)."""

    model_config = ConfigDict(extra="allow")

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class EncoderSpec(ComponentSpec):
    """``name`` (default: the modality type's default encoder), ``init`` (weights to start
    from: a state dict or a medmodal checkpoint), ``freeze_init`` (keep them fixed),
    ``init_allow_overlap`` (accept a pretraining checkpoint that saw this run's validation or test
    images; off: a DataError)."""

    name: str | None = None
    init: str | None = None
    freeze_init: bool = False
    init_allow_overlap: bool = Field(
        default=False,
        description="train from a pretraining that saw this run's validation / test images",
    )


class FusionSpec(ComponentSpec):
    name: str = "concat"


class HeadSpec(ComponentSpec):
    name: str = "linear"


class SurvivalOptions(Strict):
    """A survival target's model: ``cox`` (one risk score, Efron partial likelihood, Breslow
    baseline after training) or ``logistic_hazard`` (discrete time: one hazard logit per interval
    of ``bins`` intervals cut at quantiles of the training event times)."""

    method: Literal["cox", "logistic_hazard"] = "cox"
    bins: int = Field(default=20, ge=2, le=200, description="logistic_hazard: time intervals")


class LearnerSpec(ComponentSpec):
    """A classical learner by ``name`` (``medmodal models list``); other keys are its options."""

    name: str


class FeatureSpec(ComponentSpec):
    """A feature extractor by ``name``; other keys are its options."""

    name: str


FeatureEntry = str | FeatureSpec | list[str | FeatureSpec]


class MemberSpec(Strict):
    """One ensemble member: the config's deep model trained with ``seed`` (no ``learner``), or a
    classical ``learner`` on ``features`` (per modality; default: each type's defaults)."""

    name: str | None = Field(default=None, description="label in the report")
    seed: int | None = Field(default=None, description="deep member: its training seed")
    learner: str | LearnerSpec | None = None
    features: dict[str, FeatureEntry] = Field(default_factory=dict)


class EnsembleConfig(Strict):
    """Members chosen and weighted on the validation split by greedy ensemble selection with
    replacement (Caruana et al. 2004). ``members`` empty: ``deep_seeds`` copies of the config's
    deep model (seeds ``seed``, ``seed + 1``, ...) and each of ``learners`` (None: the task's
    defaults) on the default features."""

    members: list[MemberSpec] = Field(default_factory=list)
    deep_seeds: int = Field(default=2, ge=0, le=20)
    learners: list[str | LearnerSpec] | None = None
    rounds: int = Field(default=25, ge=1, le=1000, description="selection steps")
    metric: Literal[
        "auto", "auroc", "log_loss", "accuracy", "balanced_accuracy", "f1_macro", "c_index"
    ] = Field(default="auto", description="validation score to maximise (auto: AUROC / C)")
    time_budget: float | None = Field(
        default=None,
        gt=0,
        description="seconds; members not started by then are skipped (the first always runs)",
    )
    selection_fraction: float = Field(
        default=0.5,
        ge=0,
        lt=1,
        description="share of the validation patients held back from the deep members' epoch "
        "choice and used for the selection alone (0: both on all validation rows)",
    )
    keep_all: bool = Field(
        default=False,
        description="keep the members not chosen in the checkpoint too (weight 0), e.g. to "
        "score each member on the test split afterwards",
    )
    min_selection_rows: int = Field(
        default=10,
        ge=0,
        description="fewest rows of any class (multilabel: positives of any label; survival: "
        "events) the selection rows must hold for weights to be chosen there; below it the "
        "scores are noise and every member gets the same weight (no stack)",
    )
    stack: bool = Field(
        default=True,
        description="binary / multiclass: also fit a logistic-regression stack on the members' "
        "validation log-probabilities (cross-fitted) and use it when its out-of-fold score "
        "beats the weighted ensemble's (medmodal.ensemble.stack)",
    )


class ModelConfig(Strict):
    encoders: dict[str, EncoderSpec] = Field(default_factory=dict)
    fusion: FusionSpec = Field(default_factory=FusionSpec)
    head: HeadSpec = Field(default_factory=HeadSpec)
    modality_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    survival: SurvivalOptions = Field(default_factory=SurvivalOptions)
    # -- classical learners and ensembles (medmodal.classical, medmodal.ensemble) --
    learner: str | LearnerSpec | None = Field(
        default=None, description="a classical learner instead of the deep model"
    )
    features: dict[str, FeatureEntry] = Field(
        default_factory=dict, description="classical features per modality (default: by type)"
    )
    ensemble: EnsembleConfig | None = Field(
        default=None, description="members chosen on validation (`--preset best`)"
    )

    @model_validator(mode="after")
    def _one_kind(self) -> ModelConfig:
        if self.learner is not None and self.ensemble is not None:
            raise ValueError(
                "model.learner and model.ensemble exclude each other (an ensemble "
                "names its learners in model.ensemble.learners or .members)"
            )
        if self.features and self.learner is None:
            raise ValueError("model.features are the inputs of a classical model.learner")
        return self

    def deep_only(self) -> ModelConfig:
        """This model section without the classical learner, features and ensemble."""
        return self.model_copy(update={"learner": None, "features": {}, "ensemble": None})


class OneCycleOptions(Strict):
    """``train.scheduler: onecycle`` (Smith 2018, fastai's ``fit_one_cycle``, as in the PTB-XL
    reference): the lr rises from ``lr / div_factor`` to ``train.lr`` over the first
    ``pct_start`` of the steps, then anneals to ``lr / (div_factor * final_div_factor)``;
    with ``cycle_momentum`` the momentum (Adam's beta1) moves the other way between
    ``max_momentum`` and ``base_momentum``."""

    pct_start: float = Field(default=0.3, gt=0, lt=1, description="fraction of steps rising")
    div_factor: float = Field(default=25.0, ge=1, description="initial lr = lr / div_factor")
    final_div_factor: float = Field(default=1e4, ge=1, description="final lr = initial / this")
    anneal: Literal["cos", "linear"] = "cos"
    cycle_momentum: bool = True
    base_momentum: float = Field(default=0.85, ge=0, lt=1)
    max_momentum: float = Field(default=0.95, ge=0, lt=1)


class TrainConfig(Strict):
    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=64, ge=1)
    eval_batch_size: int = Field(default=256, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: float = Field(default=0.9, ge=0, lt=1, description="SGD (Nesterov) momentum")
    scheduler: Literal["none", "cosine", "multistep", "plateau", "onecycle"] = "cosine"
    onecycle: OneCycleOptions = Field(default_factory=OneCycleOptions)
    milestones: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
        default_factory=lambda: [0.5, 0.75], description="multistep: fractions of the epochs"
    )
    gamma: float = Field(default=0.1, gt=0, le=1)
    plateau_patience: int = Field(default=3, ge=0, description="plateau: epochs without gain")
    warmup_epochs: int = Field(default=0, ge=0)
    class_weights: Literal["none", "balanced", "sqrt"] = Field(
        default="none",
        description="loss weights: balanced (inverse class frequency) or sqrt (its square root, "
        "a softer push towards rare classes)",
    )
    sampler: Literal["none", "balanced"] = "none"
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    monitor: Literal[
        "auroc", "accuracy", "loss", "auprc", "f1_macro", "balanced_accuracy", "c_index"
    ] = Field(default="auroc", description="survival: c_index (the default auroc means it) or loss")
    early_stopping: int | None = Field(
        default=None, ge=1, description="patience in epochs; None = off"
    )
    grad_clip: float | None = Field(default=None, gt=0)
    device: str = Field(default="auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    amp: bool = Field(default=False, description="bf16 autocast on CPU, fp16 + GradScaler on CUDA")
    num_workers: int = Field(default=0, ge=0)
    cache: Literal["memory", "disk", "none"] = Field(
        default="memory",
        description="transformed tensors computed once: in memory, memory-mapped from files "
        "under the run folder (data larger than RAM), or none (transformed on every access)",
    )
    channels_last: bool = Field(
        default=False, description="image encoders in channels-last memory format (CPU/CUDA)"
    )
    compile: bool = Field(default=False, description="torch.compile the encoders for training")
    threads: int | None = Field(default=None, ge=1)
    aux_loss_weight: float = Field(
        default=0.0, ge=0, description="weight of a fusion's auxiliary loss (late fusion)"
    )


class CalibrateConfig(Strict):
    """Probability calibration fitted on the validation split after training, stored in the
    checkpoint and applied by every prediction (``none``: raw model probabilities)."""

    method: Literal["none", "temperature"] = "none"


class ConformalConfig(Strict):
    """Split-conformal prediction sets fitted on the validation split (see
    :mod:`medmodal.evaluate.conformal`); ``coverage`` is the nominal P(true class in set)."""

    method: Literal["none", "lac", "aps"] = "none"
    coverage: float = Field(default=0.9, gt=0, lt=1)


class EvaluateConfig(Strict):
    bootstrap: int = Field(default=1000, ge=0, description="resamples for CIs; 0 = none")
    ci: float = Field(default=0.95, gt=0, lt=1)
    threshold: float = Field(
        default=0.5, ge=0, le=1, description="binary / multilabel: positive when p > threshold"
    )
    report: bool = True
    times: list[Annotated[float, Field(gt=0)]] | None = Field(
        default=None,
        description="survival: times for time-dependent AUC and calibration (default: the 25/50/75 "
        "% quantiles of the event times)",
    )
    ablation: bool = True  # with several modalities: metrics with each one removed at test time
    calibrate: CalibrateConfig = Field(default_factory=CalibrateConfig)
    conformal: ConformalConfig = Field(default_factory=ConformalConfig)
    # -- explanation gallery (medmodal.explain) --
    gallery: int = Field(
        default=0,
        ge=0,
        le=50,
        description="report: this many most confident correct, most confident wrong and most "
        "uncertain cases, with explanations drawn; 0 = no gallery",
    )


class ExperimentConfig(Strict):
    name: str = "experiment"
    seed: int = 0
    output_dir: str | None = None
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def load_config(
    source: str | Path | dict[str, Any] | ExperimentConfig, overrides: list[str] | None = None
) -> ExperimentConfig:
    """Read a config (YAML path / dict) and apply ``key.sub=value`` overrides (YAML-typed)."""
    data, base = config_data(source, overrides)
    return parse_options(ExperimentConfig, resolve_paths(data, base), "config")


def config_data(
    source: str | Path | dict[str, Any] | Strict, overrides: list[str] | None = None
) -> tuple[dict[str, Any], Path]:
    """A config source (YAML path, mapping or config model) as a mapping with ``key.sub=value``
    overrides applied (values YAML-typed), and the folder its relative paths start from."""
    base = Path(".")
    if isinstance(source, Strict):
        data = source.model_dump(mode="json", by_alias=True)
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of options")
        base = path.parent
    else:
        data = dict(source)
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like train.epochs=5")
        _set(data, key.strip().split("."), yaml.safe_load(value))
    return data, base


def _set(d: dict[str, Any], keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise ConfigError(f"override path {'.'.join(keys)} crosses a non-mapping value")
    d[keys[-1]] = value


def resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative manifest / schema / root paths in a config file are relative to that file."""
    d = data.get("data")
    if isinstance(d, dict):
        for key in ("manifest", "schema", "root"):
            v = d.get(key)
            if isinstance(v, str) and v and not Path(v).is_absolute() and (base / v).exists():
                d[key] = str((base / v).resolve())
    return data
