"""Image processor: read -> channels -> resize (cached), then normalise (fitted) and augment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from medmodal.data.preprocess.base import (
    PROCESSORS,
    ModalityProcessor,
    ProcessorOptions,
    channel_mean_std,
    is_missing,
    resolve_ref,
    uniform,
)
from medmodal.data.readers import Blob, read_image
from medmodal.data.schema import ModalitySpec
from medmodal.errors import ConfigError, DataError
from medmodal.options import Strict


class ImageAugment(Strict):
    """Training-time augmentation of images (each an amount; 0 = off)."""

    flip: float = Field(default=0.0, ge=0, le=1, description="probability of a left-right flip")
    rotate: float = Field(default=0.0, ge=0, le=180, description="max rotation, degrees (2D)")
    scale: float = Field(default=0.0, ge=0, lt=1, description="max zoom in/out fraction (2D)")
    intensity: float = Field(default=0.0, ge=0, description="max gain and offset jitter")


class ImageNormalize(Strict):
    mean: list[float]
    std: list[Annotated[float, Field(gt=0)]]


class ImageOptions(ProcessorOptions):
    size: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [224, 224], min_length=2, max_length=3
    )
    channels: Literal[1, 3] = 1
    normalize: Literal["fit", "none"] | ImageNormalize = "fit"
    window: tuple[float, float] | None = None
    slice_index: int | Literal["middle"] | None = None
    frames: int | Literal["middle", "all"] | None = None
    augment: ImageAugment = Field(default_factory=ImageAugment)


class ImageProcessor(ModalityProcessor):
    """Options (``preprocess:`` in the schema):

    * ``size``: [H, W] or [D, H, W] (default [224, 224]); the number of entries sets 2D / 3D.
    * ``channels``: 1 or 3 (grayscale is repeated; colour is converted by luminance).
    * ``normalize``: ``"fit"`` (per-channel mean/std of the training split, default),
      ``"none"`` or ``{mean: [...], std: [...]}``.
    * ``window``: DICOM/NIfTI intensity window ``[center, width]`` (else the file's VOI LUT).
    * ``slice_index``: for a 3D file used as 2D input: an index or ``"middle"``.
    * ``frames``: which frames of a multi-frame DICOM.
    * ``augment``: ``{flip: 0.5, rotate: 10, scale: 0.1, intensity: 0.1}`` (training only).
    """

    modality_type = "image"
    Options = ImageOptions
    opts: ImageOptions

    def __init__(self, name: str, spec: ModalitySpec) -> None:
        super().__init__(name, spec)
        self.size = tuple(self.opts.size)
        self.channels = self.opts.channels
        self.mean_: list[float] | None = None
        self.std_: list[float] | None = None
        if isinstance(self.opts.normalize, ImageNormalize):
            n = self.opts.normalize
            if not len(n.mean) == len(n.std) == self.channels:
                raise ConfigError(
                    f"modality {name!r}: normalize needs {self.channels} mean and std value(s)"
                )
            self.mean_, self.std_ = list(n.mean), list(n.std)

    @property
    def spatial_dims(self) -> int:
        return len(self.size)

    def read(self, row: Mapping[str, Any], root: Path | None) -> np.ndarray | None:
        value = row[self.spec.column]
        if is_missing(value):
            return None
        path = value if isinstance(value, Blob) else resolve_ref(str(value), root)
        o = self.opts
        arr = read_image(
            path,
            window=o.window,
            slice_index=o.slice_index,
            frames=o.frames,
            spatial_dims=self.spatial_dims,
        )
        return self._shape(arr, str(path))

    def _shape(self, arr: np.ndarray, path: str) -> np.ndarray:
        want = self.spatial_dims
        if arr.ndim - 1 == 3 and want == 2:
            if arr.shape[1] == 1:
                arr = arr[:, 0]
            else:
                raise DataError(
                    f"got a 3D volume of shape {arr.shape[1:]} for a 2D model; set preprocess.slice_index",
                    path=path,
                )
        if arr.ndim - 1 != want:
            raise DataError(f"expected a {want}D image, got array of shape {arr.shape}", path=path)
        c = arr.shape[0]
        if c != self.channels:
            if c == 1:
                arr = np.repeat(arr, self.channels, axis=0)
            elif self.channels == 1 and c >= 3:
                arr = (0.299 * arr[0] + 0.587 * arr[1] + 0.114 * arr[2])[None]
            else:
                raise DataError(f"cannot turn {c} channels into {self.channels}", path=path)
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        if tuple(t.shape[1:]) != self.size:
            mode = "bilinear" if want == 2 else "trilinear"
            t = F.interpolate(
                t[None], size=self.size, mode=mode, align_corners=False, antialias=want == 2
            )[0]
        return t.numpy()

    def fit(self, raws: Sequence[np.ndarray | None]) -> ImageProcessor:
        if self.opts.normalize == "fit":
            imgs = [r for r in raws if r is not None]
            if not imgs:
                raise ValueError(
                    f"modality {self.name!r}: no training image to fit normalisation on"
                )
            self.mean_, self.std_ = channel_mean_std(imgs)
        return self

    def transform(self, raw: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(raw)
        if self.mean_ is not None and self.std_ is not None:
            shape = (-1,) + (1,) * self.spatial_dims
            x = (x - torch.tensor(self.mean_).view(shape)) / torch.tensor(self.std_).view(shape)
        return x.float()

    def missing(self) -> torch.Tensor:
        return torch.zeros((self.channels, *self.size))

    def augment(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Random flip / rotation / scale / intensity jitter (2D), flips (3D)."""
        a = self.opts.augment

        def u() -> float:
            return uniform(generator)

        if a.flip and u() < a.flip:
            x = torch.flip(x, dims=(-1,))
        if self.spatial_dims == 2 and (a.rotate or a.scale):
            angle = np.deg2rad((u() * 2 - 1) * a.rotate)
            scale = 1 + (u() * 2 - 1) * a.scale
            cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
            theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x.dtype)[None]
            grid = F.affine_grid(theta, [1, *x.shape], align_corners=False)
            x = F.grid_sample(
                x[None], grid, mode="bilinear", padding_mode="border", align_corners=False
            )[0]
        if a.intensity:
            k = a.intensity
            x = x * (1 + (u() * 2 - 1) * k) + (u() * 2 - 1) * k
        return x

    def info(self) -> dict[str, Any]:
        return {
            "in_channels": self.channels,
            "spatial_dims": self.spatial_dims,
            "size": list(self.size),
        }

    @property
    def is_fitted(self) -> bool:
        return self.opts.normalize != "fit" or self.mean_ is not None


@PROCESSORS.register("image")
def image(name: str, spec: ModalitySpec) -> ModalityProcessor:
    """Images: PNG/JPEG/TIFF, DICOM, NIfTI, .npz members; resize, normalise, augment."""
    return ImageProcessor(name, spec)
