"""The experiment config: one pydantic model, YAML in, saved inside every checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medmodal.data.schema import _pydantic_message
from medmodal.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
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
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    stratify: bool = True
    skip_bad: bool = False

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ModelConfig(_Strict):
    encoders: dict[str, dict[str, Any]] = Field(default_factory=dict)
    fusion: dict[str, Any] = Field(default_factory=lambda: {"name": "concat"})
    head: dict[str, Any] = Field(default_factory=lambda: {"name": "linear"})
    modality_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


class TrainConfig(_Strict):
    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=64, ge=1)
    eval_batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    scheduler: Literal["none", "cosine", "multistep", "plateau"] = "cosine"
    milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75])
    gamma: float = 0.1
    warmup_epochs: int = 0
    class_weights: Literal["none", "balanced"] = "none"
    sampler: Literal["none", "balanced"] = "none"
    label_smoothing: float = 0.0
    monitor: Literal["auroc", "accuracy", "loss", "auprc", "f1_macro"] = "auroc"
    early_stopping: int | None = Field(default=None, description="patience in epochs; None = off")
    grad_clip: float | None = None
    device: str = "auto"
    amp: bool = False
    num_workers: int = 0
    threads: int | None = None
    aux_loss_weight: float = 0.0


class EvaluateConfig(_Strict):
    bootstrap: int = 1000
    ci: float = 0.95
    threshold: float = 0.5
    report: bool = True
    ablation: bool = True  # with several modalities: metrics with each one removed at test time


class ExperimentConfig(_Strict):
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
    base = Path(".")
    if isinstance(source, ExperimentConfig):
        data = source.to_dict()
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        base = path.parent
    else:
        data = dict(source)
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like train.epochs=5")
        _set(data, key.strip().split("."), yaml.safe_load(value))
    data = _resolve_paths(data, base)
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"config: {_pydantic_message(exc)}") from None


def _set(d: dict[str, Any], keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise ConfigError(f"override path {'.'.join(keys)} crosses a non-mapping value")
    d[keys[-1]] = value


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative manifest / schema / root paths in a config file are relative to that file."""
    d = data.get("data")
    if isinstance(d, dict):
        for key in ("manifest", "schema", "root"):
            v = d.get(key)
            if isinstance(v, str) and v and not Path(v).is_absolute() and (base / v).exists():
                d[key] = str((base / v).resolve())
    return data
