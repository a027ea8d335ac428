"""Image processor: read -> channels -> resize (cached), then normalise (fitted) and augment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medmodal.data.preprocess.base import (
    PROCESSORS,
    ModalityProcessor,
    channel_mean_std,
    is_missing,
    resolve_path,
    uniform,
)
from medmodal.data.readers import read_image
from medmodal.data.schema import ModalitySpec
from medmodal.errors import DataError


class ImageProcessor(ModalityProcessor):
    """Options (``preprocess:`` in the schema):

    * ``size``: [H, W] or [D, H, W] (default [224, 224]); the number of entries sets 2D / 3D.
    * ``channels``: 1 or 3 (grayscale is repeated; colour is converted by luminance).
    * ``normalize``: ``"fit"`` (per-channel mean/std of the training split, default),
      ``"none"`` or ``{mean: [...], std: [...]}``.
    * ``window``: DICOM/NIfTI intensity window ``[center, width]`` (else the file's VOI LUT).
    * ``slice_index``: for a 3D file used as 2D input: an index or ``"middle"``.
    * ``augment``: ``{flip: 0.5, rotate: 10, scale: 0.1, intensity: 0.1}`` (training only).
    """

    modality_type = "image"

    def __init__(self, name: str, spec: ModalitySpec) -> None:
        super().__init__(name, spec)
        self.size = tuple(int(s) for s in self.options.get("size", (224, 224)))
        if len(self.size) not in (2, 3):
            raise ValueError(f"image size must have 2 or 3 entries, got {self.size}")
        self.channels = int(self.options.get("channels", 1))
        if self.channels not in (1, 3):
            raise ValueError(f"image channels must be 1 or 3, got {self.channels}")
        self.normalize = self.options.get("normalize", "fit")
        self.augment_opts: dict[str, float] = dict(self.options.get("augment") or {})
        self.mean_: list[float] | None = None
        self.std_: list[float] | None = None
        if isinstance(self.normalize, Mapping):
            self.mean_ = [float(v) for v in self.normalize["mean"]]
            self.std_ = [float(v) for v in self.normalize["std"]]

    @property
    def spatial_dims(self) -> int:
        return len(self.size)

    def read(self, row: Mapping[str, Any], root: Path | None) -> np.ndarray | None:
        value = row[self.spec.column]
        if is_missing(value):
            return None
        ref = str(value)
        path = ref if "#" in ref else resolve_path(ref, root)
        opts = {k: self.options.get(k) for k in ("window", "slice_index", "frames")}
        opts["spatial_dims"] = self.spatial_dims
        arr = read_image(path, **opts)
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
        if self.normalize == "fit":
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
        opts = self.augment_opts
        if not opts:
            return x

        def u() -> float:
            return uniform(generator)

        if opts.get("flip") and u() < float(opts["flip"]):
            x = torch.flip(x, dims=(-1,))
        if self.spatial_dims == 2 and (opts.get("rotate") or opts.get("scale")):
            angle = np.deg2rad((u() * 2 - 1) * float(opts.get("rotate", 0)))
            scale = 1 + (u() * 2 - 1) * float(opts.get("scale", 0))
            cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
            theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x.dtype)[None]
            grid = F.affine_grid(theta, [1, *x.shape], align_corners=False)
            x = F.grid_sample(
                x[None], grid, mode="bilinear", padding_mode="border", align_corners=False
            )[0]
        if opts.get("intensity"):
            k = float(opts["intensity"])
            x = x * (1 + (u() * 2 - 1) * k) + (u() * 2 - 1) * k
        return x

    def info(self) -> dict[str, Any]:
        return {
            "in_channels": self.channels,
            "spatial_dims": self.spatial_dims,
            "size": list(self.size),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"mean_": self.mean_, "std_": self.std_}

    def load_state_dict(self, state: Mapping[str, Any]) -> ImageProcessor:
        self.mean_ = state.get("mean_")
        self.std_ = state.get("std_")
        return self

    @property
    def is_fitted(self) -> bool:
        return self.normalize != "fit" or self.mean_ is not None


@PROCESSORS.register("image")
def image(name: str, spec: ModalitySpec) -> ModalityProcessor:
    """Images: PNG/JPEG/TIFF, DICOM, NIfTI, .npz members; resize, normalise, augment."""
    return ImageProcessor(name, spec)
