"""ECG / biosignal features: per-lead statistics and spectra, and beat morphology."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medmodal.classical.features.base import FeatureExtractor, as_numpy, register_features

BANDS = ((0.5, 4.0), (4.0, 8.0), (8.0, 15.0), (15.0, 25.0), (25.0, 40.0))
QUANTILES = (1, 5, 25, 50, 75, 95, 99)


def _moments(v: np.ndarray) -> list[np.ndarray]:
    """Mean, std, skewness, kurtosis along the last axis."""
    mu, sd = v.mean(-1), v.std(-1)
    z = (v - mu[..., None]) / np.maximum(sd[..., None], 1e-8)
    return [mu, sd, (z**3).mean(-1), (z**4).mean(-1) - 3]


class LeadStats(FeatureExtractor):
    """Per lead: mean, std, skewness, kurtosis, min, max, percentiles, mean / std of the first
    difference, zero-crossing rate, relative power in frequency ``bands`` (Hz; needs the
    sampling rate), the dominant frequency, and the lag of the autocorrelation peak between
    0.3 and 2 s (a heart-rate proxy)."""

    def __init__(self, info: dict[str, Any], bands: list[tuple[float, float]]) -> None:
        self.leads = int(info.get("in_channels") or 1)
        self.fs = float(info["fs"]) if info.get("fs") else None
        self.bands = [tuple(b) for b in bands] if self.fs else []
        self.length = int(info.get("length") or 0)

    def transform(self, x: torch.Tensor) -> np.ndarray:
        v = as_numpy(x).astype(np.float64)
        d = np.diff(v, axis=-1)
        c = v - v.mean(-1, keepdims=True)
        zc = (np.signbit(c[..., 1:]) != np.signbit(c[..., :-1])).mean(-1)
        feats = [*_moments(v), v.min(-1), v.max(-1)]
        feats += list(np.percentile(v, QUANTILES, axis=-1))
        feats += [np.abs(d).mean(-1), d.std(-1), zc]
        if self.fs:
            feats += self._spectral(c)
        out = np.stack(feats, axis=-1)  # (B, leads, stats)
        return out.reshape(v.shape[0], -1).astype(np.float32)

    def _spectral(self, c: np.ndarray) -> list[np.ndarray]:
        assert self.fs is not None
        power = np.abs(np.fft.rfft(c, axis=-1)) ** 2
        freqs = np.fft.rfftfreq(c.shape[-1], 1 / self.fs)
        total = power[..., freqs > 0].sum(-1) + 1e-12
        out = [power[..., (freqs >= lo) & (freqs < hi)].sum(-1) / total for lo, hi in self.bands]
        out.append(freqs[np.argmax(np.where(freqs > 0, power, 0), axis=-1)])
        ac = np.fft.irfft(power, n=2 * c.shape[-1], axis=-1)[..., : c.shape[-1]]
        lo, hi = self._acf_lags(c.shape[-1])
        if hi > lo:
            out.append((lo + np.argmax(ac[..., lo:hi], axis=-1)) / self.fs)
        return out

    def _acf_lags(self, n: int) -> tuple[int, int]:
        assert self.fs is not None
        return int(0.3 * self.fs), min(int(2.0 * self.fs), n - 1)

    def stat_names(self) -> list[str]:
        out = ["mean", "std", "skew", "kurtosis", "min", "max", *[f"p{q}" for q in QUANTILES]]
        out += ["diff_abs_mean", "diff_std", "zero_cross"]
        if self.fs:
            out += [f"power_{lo:g}-{hi:g}Hz" for lo, hi in self.bands] + ["dominant_hz"]
            lo, hi = self._acf_lags(self.length)
            out += ["acf_peak_s"] if hi > lo else []
        return out

    def names(self) -> list[str]:
        return [f"lead{lead}_{s}" for lead in range(self.leads) for s in self.stat_names()]


class BeatShape(FeatureExtractor):
    """A beat window per lead: the waveform average-pooled to ``points`` samples, its moments,
    min / max and where they fall (fraction of the window), and its energy."""

    def __init__(self, info: dict[str, Any], points: int) -> None:
        self.leads = int(info.get("in_channels") or 1)
        self.length = int(info.get("length") or points)
        self.points = min(points, self.length)

    def transform(self, x: torch.Tensor) -> np.ndarray:
        pooled = torch.nn.functional.adaptive_avg_pool1d(x.float(), self.points)
        v = as_numpy(x).astype(np.float64)
        n = v.shape[-1]
        extra = [*_moments(v), v.min(-1), v.max(-1), v.argmin(-1) / n, v.argmax(-1) / n,
                 (v**2).mean(-1)]  # fmt: skip
        stats = np.stack(extra, axis=-1)
        out = np.concatenate([as_numpy(pooled), stats], axis=-1)
        return out.reshape(v.shape[0], -1).astype(np.float32)

    STATS = ("mean", "std", "skew", "kurtosis", "min", "max", "argmin", "argmax", "energy")

    def names(self) -> list[str]:
        per = [f"t{k}" for k in range(self.points)] + list(self.STATS)
        return [f"lead{lead}_{s}" for lead in range(self.leads) for s in per]


class Rhythm(FeatureExtractor):
    """Beats found on the lead with the most 5-15 Hz energy (band-passed envelope peaks at
    least 0.3 s apart): heart rate, RR sd / min / max, RMSSD, beat count, and each lead's median
    amplitude at the beats. NaN where fewer than three beats are found."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.leads = int(info.get("in_channels") or 1)
        self.fs = float(info["fs"])

    def transform(self, x: torch.Tensor) -> np.ndarray:
        from scipy.signal import butter, find_peaks, sosfiltfilt

        v = as_numpy(x).astype(np.float64)
        sos = butter(2, [5, min(15, 0.45 * self.fs)], btype="band", fs=self.fs, output="sos")
        band = np.abs(sosfiltfilt(sos, v, axis=-1))
        rows = []
        for rec, env in zip(v, band, strict=True):
            lead = int(np.argmax((env**2).sum(-1)))
            e = env[lead]
            peaks, _ = find_peaks(e, distance=max(1, int(0.3 * self.fs)),
                                  height=0.35 * np.percentile(e, 99))  # fmt: skip
            rr = np.diff(peaks) / self.fs
            if len(rr) < 2:
                rows.append(np.full(6 + self.leads, np.nan))
                continue
            hr = [60 / rr.mean(), rr.std(), rr.min(), rr.max(),
                  np.sqrt(np.mean(np.diff(rr) ** 2)), len(peaks)]  # fmt: skip
            rows.append(np.concatenate([hr, np.median(rec[:, peaks], axis=1)]))
        return np.asarray(rows, dtype=np.float32)

    def names(self) -> list[str]:
        base = ["heart_rate", "rr_sd", "rr_min", "rr_max", "rmssd", "beats"]
        return base + [f"lead{lead}_r_amplitude" for lead in range(self.leads)]


def long_window(info: dict[str, Any]) -> bool:
    """A record of at least 2 s (rhythm features); shorter windows are single beats."""
    fs, length = info.get("fs"), info.get("length")
    return bool(fs and length and length / fs >= 2.0)


@register_features("lead_stats", ("signal",), default=True)
def lead_stats(
    info: dict[str, Any], processor: Any, bands: tuple[tuple[float, float], ...] = BANDS
) -> FeatureExtractor:
    """Per-lead statistics, band powers, dominant frequency, autocorrelation peak."""
    return LeadStats(info, bands)


@register_features("rhythm", ("signal",), default=True, when=long_window)
def rhythm(info: dict[str, Any], processor: Any) -> FeatureExtractor:
    """Heart rate and RR variability from detected beats, R amplitudes per lead (>= 2 s)."""
    if not info.get("fs"):
        raise ValueError("rhythm features need the sampling rate (preprocess.fs)")
    return Rhythm(info)


@register_features("beat_shape", ("signal",), default=True, when=lambda i: not long_window(i))
def beat_shape(info: dict[str, Any], processor: Any, points: int = 32) -> FeatureExtractor:
    """ECG beat morphology: the pooled waveform and its extrema per lead."""
    if points < 2:
        raise ValueError("points must be at least 2")
    return BeatShape(info, points)
