"""Image features: pooled pixels, intensity histograms, texture (LBP, HOG, GLCM; 2D)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medmodal.classical.features.base import (
    FeatureExtractor,
    as_numpy,
    present_rows,
    register_features,
)
from medmodal.errors import ConfigError


class Pixels(FeatureExtractor):
    """The processed image average-pooled to ``size`` per spatial side (no pooling when it is
    already that small), flattened; feature ``k`` is one pooled pixel (explanations map it back)."""

    def __init__(self, info: dict[str, Any], size: int) -> None:
        self.channels = int(info.get("in_channels", 1))
        self.in_size = [int(s) for s in info.get("size", [])]
        self.out_size = [min(size, s) for s in self.in_size]

    def transform(self, x: torch.Tensor) -> np.ndarray:
        x = x.float()
        if list(x.shape[2:]) != self.out_size:
            pool = F.adaptive_avg_pool3d if x.dim() == 5 else F.adaptive_avg_pool2d
            x = pool(x, self.out_size)
        return as_numpy(x.reshape(x.shape[0], -1))

    def names(self) -> list[str]:
        grid = np.indices([self.channels, *self.out_size]).reshape(len(self.out_size) + 1, -1).T
        return ["pixel[" + ",".join(str(int(v)) for v in idx) + "]" for idx in grid]


class Histogram(FeatureExtractor):
    """Per channel: the share of pixels in each of ``bins`` intensity bins between the training
    images' 0.5th and 99.5th percentiles, and mean, std, 10/50/90th percentiles."""

    STATS = ("mean", "std", "p10", "p50", "p90")

    def __init__(self, info: dict[str, Any], bins: int) -> None:
        self.channels, self.bins = int(info.get("in_channels", 1)), bins
        self.lo_: np.ndarray | None = None
        self.hi_: np.ndarray | None = None

    def fit(self, x: torch.Tensor, present: np.ndarray) -> Histogram:
        v = as_numpy(present_rows(x, present)).swapaxes(0, 1).reshape(self.channels, -1)
        self.lo_ = np.percentile(v, 0.5, axis=1)
        self.hi_ = np.percentile(v, 99.5, axis=1)
        return self

    def transform(self, x: torch.Tensor) -> np.ndarray:
        assert self.lo_ is not None and self.hi_ is not None
        v = as_numpy(x).reshape(x.shape[0], self.channels, -1)
        out = []
        for c in range(self.channels):
            edges = np.linspace(self.lo_[c], self.hi_[c] + 1e-6, self.bins + 1)
            idx = np.clip(np.searchsorted(edges, v[:, c], side="right") - 1, 0, self.bins - 1)
            counts = np.stack([np.bincount(r, minlength=self.bins) for r in idx])
            out.append(counts / v.shape[2])
            q = np.percentile(v[:, c], [10, 50, 90], axis=1).T
            out.append(np.column_stack([v[:, c].mean(1), v[:, c].std(1), q]))
        return np.concatenate(out, axis=1).astype(np.float32)

    def names(self) -> list[str]:
        out = []
        for c in range(self.channels):
            out += [f"hist[{c}]_bin{b}" for b in range(self.bins)]
            out += [f"hist[{c}]_{s}" for s in self.STATS]
        return out


class Texture(FeatureExtractor):
    """2D texture of the channel mean, scaled to 8 bits between the training percentiles: a
    uniform LBP histogram (8 neighbours, ``radius``), HOG (``cell`` px cells, 9 orientations)
    and GLCM contrast / homogeneity / energy / correlation at distance 1 in 4 directions."""

    def __init__(self, info: dict[str, Any], radius: int, cell: int) -> None:
        size = [int(s) for s in info.get("size", [])]
        if len(size) != 2:
            raise ValueError("texture features are for 2D images")
        try:
            import skimage  # noqa: F401
        except ImportError:
            raise ConfigError(
                "texture features need scikit-image: pip install 'medmodal[classical]'"
            ) from None
        self.size, self.radius, self.cell = size, radius, min(cell, *size)
        self.lo_: float | None = None
        self.hi_: float | None = None

    def fit(self, x: torch.Tensor, present: np.ndarray) -> Texture:
        v = as_numpy(present_rows(x, present)).mean(1)
        self.lo_, self.hi_ = float(np.percentile(v, 0.5)), float(np.percentile(v, 99.5))
        return self

    def transform(self, x: torch.Tensor) -> np.ndarray:
        from skimage.feature import graycomatrix, graycoprops, hog, local_binary_pattern

        assert self.lo_ is not None and self.hi_ is not None
        v = np.nan_to_num(as_numpy(x).mean(1))
        u8 = (np.clip((v - self.lo_) / max(self.hi_ - self.lo_, 1e-6), 0, 1) * 255).astype(np.uint8)
        rows = []
        for img in u8:
            lbp = local_binary_pattern(img, 8, self.radius, method="uniform")
            lbp_hist = np.bincount(lbp.astype(int).ravel(), minlength=10)[:10] / lbp.size
            h = hog(img, orientations=9, pixels_per_cell=(self.cell, self.cell),
                    cells_per_block=(1, 1), feature_vector=True)  # fmt: skip
            glcm = graycomatrix(img // 8, [1], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=32,
                                symmetric=True, normed=True)  # fmt: skip
            props = [graycoprops(glcm, p).ravel() for p in self.PROPS]
            rows.append(np.concatenate([lbp_hist, h, *props]))
        return np.asarray(rows, dtype=np.float32)

    PROPS = ("contrast", "homogeneity", "energy", "correlation")

    def names(self) -> list[str]:
        cells = (self.size[0] // self.cell) * (self.size[1] // self.cell)
        out = [f"lbp_{k}" for k in range(10)] + [f"hog_{k}" for k in range(cells * 9)]
        return out + [f"glcm_{p}_{a}" for p in self.PROPS for a in (0, 45, 90, 135)]


@register_features("pixels", ("image",), default=True)
def pixels(info: dict[str, Any], processor: Any, size: int = 28) -> FeatureExtractor:
    """Pixels average-pooled to at most ``size`` per side, flattened."""
    if size < 1:
        raise ValueError("size must be at least 1")
    return Pixels(info, size)


@register_features("histogram", ("image",), default=True)
def histogram(info: dict[str, Any], processor: Any, bins: int = 32) -> FeatureExtractor:
    """Intensity histogram and summary statistics per channel."""
    if bins < 2:
        raise ValueError("bins must be at least 2")
    return Histogram(info, bins)


@register_features("texture", ("image",), default=True, dims=2)
def texture(
    info: dict[str, Any], processor: Any, radius: int = 1, cell: int = 8
) -> FeatureExtractor:
    """LBP, HOG and GLCM texture of 2D images (scikit-image)."""
    return Texture(info, radius, cell)
