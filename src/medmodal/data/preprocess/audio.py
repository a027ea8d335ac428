"""Audio processor (heart / lung sounds): wave -> fixed window -> log-mel or MFCC.

Stage 1 (``read``, cached): decode, reject silent / clipped recordings, resample,
centre-crop or zero-pad to ``duration`` and compute the time-frequency features.
Stage 2 (``transform``): per-frequency-bin standardisation fitted on the training
split. ``augment`` (training only) applies SpecAugment-style masks, a random
gain and a random circular time shift to the fixed-size tensor.

Random cropping: the dataset caches the transformed tensor of ``duration`` seconds; with
``crop: <frames>`` each training sample is a random window of that many frames of it, and
``windows: {length, hop, aggregate}`` makes the model encode sliding windows of the whole
tensor at test time and aggregate them (:mod:`medmodal.data.preprocess.windows`), e.g.
``duration: 10, crop: 188, windows: {}`` trains on 3 s windows (188 frames of the default
128-sample hop at 8 kHz) and averages half-overlapping 3 s windows of the 10 s at test. Without ``crop`` the random
position is realised by ``augment.shift`` (a circular roll along time; heart and lung sounds
are quasi-periodic, so a roll is a plausible re-cut).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from medmodal.data.preprocess.base import (
    PROCESSORS,
    ModalityProcessor,
    ProcessorOptions,
    channel_mean_std,
    is_missing,
    resolve_path,
    uniform,
)
from medmodal.data.preprocess.windows import (
    CropWindowOptions,
    encoder_steps,
    head_crop,
    random_crop,
    window_info,
)
from medmodal.data.readers.audio import (
    CLIP_FRACTION,
    CLIP_LEVEL,
    SILENT_PEAK,
    check_audio,
    read_audio,
    resample_audio,
)
from medmodal.data.readers.blob import Blob
from medmodal.data.schema import ModalitySpec
from medmodal.errors import ConfigError
from medmodal.options import Strict

TOP_DB = 80.0  # log-mel floor below the clip's maximum (librosa.power_to_db)


class AudioAugment(Strict):
    time_mask: int = Field(default=0, ge=0, description="max frames per time mask")
    freq_mask: int = Field(default=0, ge=0, description="max feature rows per frequency mask")
    n_masks: int = Field(default=2, ge=0, description="masks of each kind")
    gain_db: float = Field(default=0.0, ge=0, description="max random gain, dB")
    shift: int = Field(default=0, ge=0, description="max circular time shift, frames")


class AudioOptions(ProcessorOptions, CropWindowOptions):
    sample_rate: int = Field(default=8000, gt=0)
    duration: float = Field(default=3.0, gt=0)
    pad: Literal["zero", "repeat"] = "zero"
    features: Literal["logmel", "mfcc"] = "logmel"
    n_mels: int = Field(default=64, ge=1)
    n_mfcc: int = Field(default=20, ge=1)
    deltas: Literal[0, 1, 2] = 0
    n_fft: int = Field(default=512, ge=16)
    hop_length: int | None = Field(default=None, ge=1)
    fmin: float = Field(default=0.0, ge=0)
    fmax: float | None = Field(default=None, gt=0)
    standardize: Literal["fit", "none"] = "fit"
    check_silent: bool = True
    check_clipped: bool = True
    silent_peak: float = Field(default=SILENT_PEAK, ge=0)
    clip_level: float = Field(default=CLIP_LEVEL, gt=0, le=1)
    clip_fraction: float = Field(default=CLIP_FRACTION, gt=0, le=1)
    augment: AudioAugment = Field(default_factory=AudioAugment)


class AudioProcessor(ModalityProcessor):
    """Options (``preprocess:`` in the schema):

    * ``sample_rate``: target rate in Hz (default 8000); files are resampled with soxr.
    * ``duration``: window in seconds (default 3.0): centre crop, or ``pad``
      (``zero``, default: zeros at the end; ``repeat``: tile the recording).
    * ``features``: ``logmel`` (default, dB, ``n_mels`` 64) or ``mfcc`` (``n_mfcc`` 20,
      ``deltas`` 0/1/2 appends delta and delta-delta coefficients).
    * ``n_fft`` (512), ``hop_length`` (n_fft // 4), ``fmin`` (0), ``fmax`` (sample_rate / 2).
    * ``standardize``: ``fit`` (default: per-feature-bin mean/std of the training split)
      or ``none``.
    * ``check_silent`` / ``check_clipped`` (default true), ``silent_peak`` (1e-4),
      ``clip_level`` (0.999), ``clip_fraction`` (0.05): quality checks -> DataError.
    * ``augment``: ``{time_mask: frames, freq_mask: bins, n_masks: 2, gain_db: 6, shift: frames}``
      (training only): ``n_masks`` masks of up to ``time_mask`` frames and of up to
      ``freq_mask`` bins set to the mean (0 after standardisation); a uniform gain in
      ``[-gain_db, gain_db]`` dB; a circular time roll of up to ``shift`` frames.
    * ``crop`` (frames): training on a random window of the features;
      ``windows: {length, hop, aggregate}``: the model encodes sliding windows at test time
      and aggregates their embeddings (mean / max); see :mod:`.windows`.

    Output: FloatTensor ``(1, n_features, n_frames)``, ``n_frames = 1 + samples // hop_length``.
    """

    modality_type = "audio"
    Options = AudioOptions
    opts: AudioOptions

    def __init__(self, name: str, spec: ModalitySpec) -> None:
        super().__init__(name, spec)
        o = self.opts
        self.sample_rate, self.duration, self.pad = o.sample_rate, o.duration, o.pad
        self.features, self.n_mels, self.n_mfcc, self.deltas = (
            o.features,
            o.n_mels,
            o.n_mfcc,
            o.deltas,
        )
        self.n_fft = o.n_fft
        self.hop_length = o.hop_length or self.n_fft // 4
        self.fmin = o.fmin
        self.fmax = o.fmax or self.sample_rate / 2
        self.standardize = o.standardize
        self.checks = {
            "silent": o.check_silent,
            "clipped": o.check_clipped,
            "silent_peak": o.silent_peak,
            "clip_level": o.clip_level,
            "clip_fraction": o.clip_fraction,
        }
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ConfigError(
                f"audio needs 0 <= fmin < fmax <= sample_rate/2, got {self.fmin}, {self.fmax}"
            )
        if self.features == "mfcc" and self.n_mfcc > self.n_mels:
            raise ConfigError(f"n_mfcc ({self.n_mfcc}) cannot exceed n_mels ({self.n_mels})")
        self.n_samples = int(round(self.duration * self.sample_rate))
        self.n_frames = 1 + self.n_samples // self.hop_length
        per = self.n_mfcc if self.features == "mfcc" else self.n_mels
        self.n_features = per * (1 + self.deltas if self.features == "mfcc" else 1)
        self._mel_basis = self._make_mel_basis()
        self._gain = self._gain_vector()
        self.mean_: list[float] | None = None
        self.std_: list[float] | None = None

    def _make_mel_basis(self) -> np.ndarray:
        import librosa

        return librosa.filters.mel(
            sr=self.sample_rate,
            n_fft=self.n_fft,
            n_mels=self.n_mels,
            fmin=self.fmin,
            fmax=self.fmax,
        ).astype(np.float32)

    def _gain_vector(self) -> np.ndarray:
        """How a +1 dB gain moves each unstandardised feature (exact: logmel is in dB,
        the orthonormal DCT maps a constant offset onto c0 only, deltas are unchanged)."""
        if self.features == "logmel":
            return np.ones(self.n_features, dtype=np.float32)
        g = np.zeros(self.n_features, dtype=np.float32)
        g[0] = np.sqrt(self.n_mels)
        return g

    # -- stage 1 -------------------------------------------------------------------------
    def read(self, row: Mapping[str, Any], root: Path | None) -> np.ndarray | None:
        value = row[self.spec.column]
        if is_missing(value):
            return None
        path = value if isinstance(value, Blob) else resolve_path(str(value), root)
        wave, sr = read_audio(path)
        c = self.checks
        check_audio(
            wave,
            sr,
            path,
            silent=c["silent"],
            clipped=c["clipped"],
            silent_peak=c["silent_peak"],
            clip_level=c["clip_level"],
            clip_fraction=c["clip_fraction"],
        )
        wave = resample_audio(wave, sr, self.sample_rate)
        return self.featurize(self.fix_length(wave))

    def fix_length(self, wave: np.ndarray) -> np.ndarray:
        """Centre crop, or pad (zeros at the end / tiled) to ``duration`` seconds."""
        n = self.n_samples
        if len(wave) >= n:
            start = (len(wave) - n) // 2
            return wave[start : start + n]
        if self.pad == "repeat":
            return np.tile(wave, -(-n // len(wave)))[:n]
        return np.pad(wave, (0, n - len(wave)))

    def featurize(self, wave: np.ndarray) -> np.ndarray:
        """(n_features, n_frames) float32 log-mel (dB) or MFCC (+ deltas) of a fixed window."""
        import librosa

        spec = np.abs(librosa.stft(wave, n_fft=self.n_fft, hop_length=self.hop_length)) ** 2
        # einsum, not BLAS: a small matmul stalls for tens of ms in BLAS thread contention
        # once torch is loaded, and the loop order is fixed (bit-reproducible).
        mel = np.einsum("mf,ft->mt", self._mel_basis, spec)
        db = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=TOP_DB)
        if self.features == "logmel":
            return np.ascontiguousarray(db, dtype=np.float32)
        feats = [librosa.feature.mfcc(S=db, n_mfcc=self.n_mfcc)]
        width = min(9, self.n_frames if self.n_frames % 2 else self.n_frames - 1)
        for order in range(1, self.deltas + 1):
            feats.append(librosa.feature.delta(feats[0], width=max(width, 3), order=order))
        return np.ascontiguousarray(np.concatenate(feats, axis=0), dtype=np.float32)

    # -- stage 2 -------------------------------------------------------------------------
    def fit(self, raws: Sequence[np.ndarray | None]) -> AudioProcessor:
        if self.standardize != "fit":
            return self
        feats = [r for r in raws if r is not None]
        if not feats:
            raise ValueError(
                f"modality {self.name!r}: no training recording to fit standardisation on"
            )
        self.mean_, self.std_ = channel_mean_std(feats)
        return self

    def transform(self, raw: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(raw, dtype=np.float32))
        if self.mean_ is not None and self.std_ is not None:
            x = (x - torch.tensor(self.mean_).view(-1, 1)) / torch.tensor(self.std_).view(-1, 1)
        return x.float().unsqueeze(0)

    def missing(self) -> torch.Tensor:
        return torch.zeros((1, self.n_features, self.n_frames))

    def train_input(
        self, x: torch.Tensor, present: bool, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A present row augmented (and cropped); an absent row's placeholder cut to ``crop``."""
        return self.augment(x, generator) if present else head_crop(x, self.opts.crop)

    def augment(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A random crop (``crop``), then SpecAugment masks, random gain and time roll on a
        copy of ``x`` (1, F, T)."""
        a = self.opts.augment
        g = generator
        if self.opts.crop:
            x = random_crop(x, self.opts.crop, g)
        if not (a.gain_db or a.shift or a.time_mask or a.freq_mask):
            return x
        x = x.clone()
        if a.gain_db:
            db = (uniform(g) * 2 - 1) * a.gain_db
            x += db * self._scaled_gain().view(-1, 1)
        if a.shift:
            k = int(torch.randint(-a.shift, a.shift + 1, (), generator=g))
            x = torch.roll(x, k, dims=-1)
        fill = 0.0 if self.mean_ is not None else float(x.mean())
        for dim, width in ((-1, a.time_mask), (-2, a.freq_mask)):
            for _ in range(a.n_masks if width > 0 else 0):
                _mask(x, dim, width, fill, g)
        return x

    def _scaled_gain(self) -> torch.Tensor:
        gain = torch.from_numpy(self._gain)
        return gain / torch.tensor(self.std_) if self.std_ is not None else gain

    def info(self) -> dict[str, Any]:
        """``n_frames``: the frames the encoder sees (a window or crop when set);
        ``windows``: the test-time window geometry when set."""
        out = {
            "in_channels": 1,
            "n_features": self.n_features,
            "n_frames": encoder_steps(self.opts, self.n_frames),
            "features": self.features,
            "sample_rate": self.sample_rate,
        }
        windows = window_info(self.opts)
        return out if windows is None else {**out, "windows": windows}

    @property
    def is_fitted(self) -> bool:
        return self.standardize != "fit" or self.mean_ is not None


def _mask(
    x: torch.Tensor, dim: int, max_width: int, fill: float, g: torch.Generator | None
) -> None:
    """Set a random band of up to ``max_width`` entries along ``dim`` to ``fill`` (in place)."""
    size = x.shape[dim]
    width = int(torch.randint(0, min(max_width, size) + 1, (), generator=g))
    if width == 0:
        return
    start = int(torch.randint(0, size - width + 1, (), generator=g))
    x.narrow(dim, start, width).fill_(fill)


@PROCESSORS.register("audio")
def audio(name: str, spec: ModalitySpec) -> ModalityProcessor:
    """Heart / lung sounds: WAV/FLAC/OGG -> log-mel or MFCC, standardised, SpecAugment."""
    return AudioProcessor(name, spec)
