"""The pretraining config: one strict pydantic model, YAML in (``--set a.b=c`` overrides).

>>> cfg = load_pretrain_config({"data": {"dataset": "pneumoniamnist"},
...                             "encoder": {"name": "vit", "patch_size": 4}})
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field

from medmodal.config import DataConfig, config_data, resolve_paths
from medmodal.errors import ConfigError
from medmodal.models.encoders import ENCODERS
from medmodal.options import Strict, parse_options
from medmodal.pretrain.model import check_path


class MaskOptions(Strict):
    ratio: float = Field(default=0.6, gt=0, lt=1, description="fraction of mask patches hidden")
    patch_size: int = Field(
        default=4,
        ge=1,
        description="side of a hidden square / cube in pixels; a multiple of the encoder's patch "
        "and a divisor of the image size",
    )


class PretrainEncoder(Strict):
    """``name`` (an encoder with a masked-image path), ``init`` (weights to start from: a state
    dict, a medmodal checkpoint or an earlier pretraining checkpoint); every other key is an
    option of the encoder, checked against its signature."""

    model_config = ConfigDict(extra="allow")
    name: str = "vit"
    init: str | None = None

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class PretrainTrain(Strict):
    epochs: int = Field(default=100, ge=1)
    batch_size: int = Field(default=128, ge=1)
    lr: float = Field(default=5e-4, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(default=0.05, ge=0)
    warmup_epochs: int = Field(default=5, ge=0, description="linear warm-up, then cosine to 0")
    grad_clip: float | None = Field(default=5.0, gt=0)
    max_images: int | None = Field(
        default=None, ge=1, description="a seeded random subset of the images (quick runs)"
    )
    device: str = Field(default="auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    threads: int | None = Field(default=None, ge=1)


class PreviewOptions(Strict):
    epochs: list[int] | None = Field(
        default=None, description="epochs (1-based) with a PNG grid; default: first and last"
    )
    images: int = Field(default=8, ge=1, le=32)


class PretrainConfig(Strict):
    """Masked-image pretraining of one image encoder on images only (labels are never read)."""

    name: str = "pretrain"
    seed: int = 0
    output_dir: str | None = None
    data: DataConfig = Field(default_factory=DataConfig)
    extra_data: list[DataConfig] = Field(
        default_factory=list,
        description="more image sources (their training split; `modalities: [name]` picks the "
        "image modality), resized to the main source's size and channels",
    )
    modality: str | None = Field(
        default=None, description="the image modality; default: the schema's only image one"
    )
    include_test: bool = Field(
        default=False,
        description="also pretrain on the validation and test splits' images (off: train only)",
    )
    encoder: PretrainEncoder = Field(default_factory=PretrainEncoder)
    mask: MaskOptions = Field(default_factory=MaskOptions)
    decoder_width: int = Field(default=64, ge=4, description="ResNet path: decoder channels")
    train: PretrainTrain = Field(default_factory=PretrainTrain)
    preview: PreviewOptions = Field(default_factory=PreviewOptions)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def encoder_options(self) -> dict[str, Any]:
        """The encoder's options, validated against its signature (ConfigError naming them)."""
        name = self.encoder.name
        where = f"encoder ({name})"
        opts = parse_options(ENCODERS.options_model(name), self.encoder.options(), where)
        return dict(opts)

    def check(self) -> PretrainConfig:
        """Checks that need no data: the encoder exists, has a masked-image path, its options fit,
        and the mask patch is a multiple of the encoder's patch (its path's ``patch_option``)."""
        path = check_path(self.encoder.name)
        opts = self.encoder_options()
        patch = opts.get(path.patch_option, 1) if path.patch_option else 1
        if self.mask.patch_size % int(patch):
            raise ConfigError(
                f"mask.patch_size {self.mask.patch_size} must be a multiple of the encoder's "
                f"patch_size {patch}"
            )
        if self.preview.epochs and any(e < 1 or e > self.train.epochs for e in self.preview.epochs):
            raise ConfigError(
                f"preview.epochs {self.preview.epochs} must lie in 1..train.epochs "
                f"({self.train.epochs})"
            )
        return self


ConfigSource = str | Path | dict[str, Any] | PretrainConfig


def load_pretrain_config(
    source: ConfigSource, overrides: list[str] | None = None
) -> PretrainConfig:
    """Read a pretraining config (YAML path / dict / model), apply ``key.sub=value`` overrides
    (YAML-typed) and check it; relative data paths in a file are relative to that file."""
    data, base = config_data(source, overrides)
    data = resolve_paths(data, base)
    extra = data.get("extra_data")
    if isinstance(extra, list):
        data["extra_data"] = [
            resolve_paths({"data": e}, base)["data"] if isinstance(e, dict) else e for e in extra
        ]
    return parse_options(PretrainConfig, data, "pretrain config").check()
