"""Signal processor (ECG and other biosignals): leads -> band-pass -> resample -> window.

Stage 1 (``read``, cached): pick the leads, band-pass (zero-phase Butterworth),
resample (``resample_poly``), z-score per record if asked, crop/pad to ``length``.
Stage 2 (``transform``): standardisation fitted on the training split (per lead, or one
scaler over every lead as in Strodthoff et al. 2021).
``augment`` (training only): a random crop (``crop``), amplitude scale, Gaussian noise,
baseline wander and a small time shift. ``windows``: the model encodes sliding windows of the
whole input at test time and aggregates them (:mod:`medmodal.data.preprocess.windows`).

Segment references (``record#start:stop``, native sample indices) are cut from the
*processed whole record*: it is filtered and resampled once per process and kept in
a byte-bounded LRU cache (:data:`PROCESSED_CACHE`), so a window has no filter or
resampling edge artefacts (only the record's own ends do) and ~100k beat windows
cost one filter pass per record.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

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
    head_crop,
    random_crop,
    window_info,
)
from medmodal.data.readers.blob import Blob
from medmodal.data.readers.signal import (
    ByteLRU,
    check_finite,
    load_record,
    parse_ref,
    record_key,
    select_leads,
    window_bounds,
)
from medmodal.data.schema import ModalitySpec
from medmodal.errors import ConfigError, DataError
from medmodal.options import Strict

PROCESSED_CACHE = ByteLRU()


@dataclass(frozen=True)
class _Processed:
    signal: np.ndarray  # (C, T') filtered + resampled, NaN gaps interpolated
    bad: np.ndarray | None  # (C, T) native-rate NaN mask, None when the record is clean
    names: list[str]
    fs_in: float
    n_in: int
    mean: np.ndarray  # (C, 1) per-lead mean and std of the processed record
    std: np.ndarray


Lead = str | int


class SignalAugment(Strict):
    scale: float = Field(default=0.0, ge=0, lt=1, description="amplitude x U(1-s, 1+s)")
    noise: float = Field(default=0.0, ge=0, description="Gaussian noise std")
    shift: int = Field(default=0, ge=0, description="max shift, samples")
    wander: float = Field(default=0.0, ge=0, description="max baseline-wander amplitude")


class SignalOptions(ProcessorOptions, CropWindowOptions):
    leads: Lead | list[Lead | list[Lead]] | None = None
    lead_fallback: bool = False
    fs: float | None = Field(default=None, gt=0)
    input_fs: float | None = Field(default=None, gt=0)
    lead_names: list[str] | None = None
    bandpass: tuple[float, float] | None = None
    filter_order: int = Field(default=3, ge=1)
    length: int | None = Field(default=None, ge=1)
    length_policy: Literal["crop_pad", "error"] = "crop_pad"
    standardize: Literal["record", "source", "fit", "global", "none"] = "record"
    reference_column: str | None = Field(
        default=None, description="a column of .npy references stacked as extra channels"
    )
    augment: SignalAugment = Field(default_factory=SignalAugment)

    @model_validator(mode="after")
    def _check_band(self) -> SignalOptions:
        if self.bandpass is not None and not 0 <= self.bandpass[0] < self.bandpass[1]:
            raise ValueError(
                f"bandpass must be [low, high] with 0 <= low < high, got {self.bandpass}"
            )
        return self


class SignalProcessor(ModalityProcessor):
    """Options (``preprocess:`` in the schema):

    * ``leads``: lead names (case-insensitive) or indices, in output order (default: all).
      A missing lead is a DataError listing the record's leads.
    * ``lead_fallback``: true = ``leads`` is a priority list and the first lead present is
      used (one channel), e.g. ``leads: [MLII, V5]`` for MIT-BIH records 102/104 (no MLII).
      A nested entry (``leads: [[MLII, V5], V1]``) is a priority group per channel.
    * ``fs``: output rate in Hz (default: the native rate; records must then agree).
    * ``input_fs``: native rate of ``.npy``/``.csv`` files (default: ``fs``);
      ``lead_names``: their lead names.
    * ``bandpass``: ``[low, high]`` Hz, e.g. ``[0.5, 40]`` for ECG (default: none); ``low``
      0 = low-pass only, ``high`` at/above Nyquist = high-pass only. ``filter_order`` (3):
      Butterworth order, applied forward-backward (``sosfiltfilt``, zero phase).
    * ``length``: output samples (after resampling); default: the most common training
      length. ``length_policy``: ``crop_pad`` (default: centre crop / symmetric zero pad)
      or ``error`` (a DataError naming the file and both lengths; needs ``length``).
    * ``standardize``: ``record`` (default: per-sample per-lead z-score), ``source`` (a
      segment is scaled by the mean / std of each lead over its whole source record, so beats
      of one patient keep their relative amplitude; a whole record: as ``record``), ``fit``
      (per-lead mean/std of the training split), ``global`` (one mean/std over every lead
      and sample of the training split: the reference PTB-XL recipe's single scaler) or
      ``none``.
    * ``augment``: ``{scale: 0.1, noise: 0.05, shift: 20, wander: 0.1}`` (training only):
      amplitude x U(1-s, 1+s); Gaussian noise of that std; a shift of up to ``shift``
      samples (edges repeated); a 0.05-0.5 Hz sine of up to that amplitude.
    * ``reference_column``: a manifest column naming, per row, a ``.npy`` array ``(C_ref, n)``
      (or ``(n,)``) already on the processed signal's rate and scale (e.g. the patient's median
      beat beside each beat: patient-relative morphology), cut or padded to ``length`` and
      appended after the leads as extra channels (a missing reference is a DataError).
    * ``crop``: training on a random window of that many samples (after resampling);
      ``windows: {length, hop, aggregate}``: at test time the model encodes every window and
      takes the mean (or max) of their embeddings (see :mod:`.windows`), e.g. ``crop: 250,
      windows: {}`` = 2.5 s crops and half-overlapping 2.5 s windows at 100 Hz.

    Output: FloatTensor ``(C, length)`` (training with ``crop``: ``(C, crop)``).
    """

    modality_type = "signal"
    Options = SignalOptions
    opts: SignalOptions

    def __init__(self, name: str, spec: ModalitySpec) -> None:
        super().__init__(name, spec)
        o = self.opts
        self.leads = o.leads
        self.lead_fallback = o.lead_fallback
        self.fs = o.fs
        self.input_fs = o.input_fs or self.fs
        self.lead_names = o.lead_names
        self.bandpass = o.bandpass
        self.filter_order = o.filter_order
        self.length = o.length
        self.length_policy = o.length_policy
        self.standardize = o.standardize
        if self.length_policy == "error" and self.length is None:
            raise ConfigError(f"modality {name!r}: length_policy: error needs `length`")
        self.fs_: float | None = self.fs
        self.length_: int | None = self.length
        self.n_channels_: int | None = None if o.reference_column else self._n_groups()
        self.mean_: list[float] | None = None
        self.std_: list[float] | None = None

    def _n_groups(self) -> int | None:
        if self.leads is None:
            return None
        if isinstance(self.leads, (str, int)):
            return 1
        flat = all(isinstance(g, (str, int)) for g in self.leads)
        return 1 if self.lead_fallback and flat else len(self.leads)

    # -- stage 1 -------------------------------------------------------------------------
    def read(self, row: Mapping[str, Any], root: Path | None) -> SignalArray | None:
        value = row[self.spec.column]
        if is_missing(value):
            return None
        if isinstance(value, Blob):  # an upload: the whole record
            path, start, stop = value, None, None
        else:
            ref, start, stop = parse_ref(str(value))
            path = resolve_path(ref, root)
        if start is None and stop is None:
            x, fs_in = self._read_whole(path)
        else:
            x, fs_in = self._read_window(path, start, stop)
            if self.standardize == "source":  # the whole record's per-lead mean / std
                p = self._processed(path)
                x = ((x - p.mean) / p.std).astype(np.float32)
        if self.standardize == "record" or (
            self.standardize == "source" and start is None and stop is None
        ):
            x = _zscore(x)
        x = self._fix_length(x, str(path))
        if self.opts.reference_column is not None:
            x = np.concatenate([x, self._reference(row, root, x.shape[1])])
        return SignalArray(x, self.fs or fs_in)

    def _reference(self, row: Mapping[str, Any], root: Path | None, n: int) -> np.ndarray:
        """The row's reference array (``reference_column``), cut or padded to ``n`` samples."""
        col = str(self.opts.reference_column)
        value = row.get(col)
        if is_missing(value):
            raise DataError(f"no reference signal in column {col!r} (reference_column)")
        path = resolve_path(str(value), root)
        try:
            ref = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read the reference signal ({exc})", path=path) from None
        ref = np.atleast_2d(np.asarray(ref, dtype=np.float32))
        if ref.ndim != 2 or not np.isfinite(ref).all():
            raise DataError(
                f"a reference must be a finite (C, n) array, got {ref.shape}", path=path
            )
        return ref if ref.shape[1] == n else _crop_pad(ref, n)

    def _read_whole(self, path: Path) -> tuple[np.ndarray, float]:
        rec = load_record(path, fs=self.input_fs, lead_names=self.lead_names, cache=False)
        idx = select_leads(rec.names, self.leads, self.lead_fallback, rec.path)
        x = rec.signal[idx]
        check_finite(x, [rec.names[i] for i in idx], rec.path)
        return self._filter_resample(x, rec.fs, rec.path), rec.fs

    def _read_window(
        self, path: Path, start: int | None, stop: int | None
    ) -> tuple[np.ndarray, float]:
        p = self._processed(path)
        s, e = window_bounds(start, stop, p.n_in, str(path))
        if p.bad is not None and p.bad[:, s:e].any():
            leads = [p.names[i] for i in np.flatnonzero(p.bad[:, s:e].any(axis=1))]
            raise DataError(f"NaN samples in window {s}:{e} of lead(s) {leads}", path=path)
        up, down = self._ratio(p.fs_in)
        n_out = math.ceil((e - s) * up / down)
        s_out = min(round(s * up / down), p.signal.shape[1] - n_out)
        return np.array(p.signal[:, s_out : s_out + n_out]), p.fs_in

    def _processed(self, path: Path) -> _Processed:
        """The whole record, leads picked, filtered and resampled once (LRU-cached).

        A record-level DataError (a missing lead, a truncated file) is cached too, so the
        other windows of a bad record fail fast instead of decoding it again each time.
        """
        key = (*record_key(path), self._params())
        hit = PROCESSED_CACHE.get(key)
        if isinstance(hit, DataError):
            raise DataError(hit.reason, path=hit.path)
        if hit is not None:
            return hit
        try:
            out = self._process_record(path)
        except DataError as err:
            PROCESSED_CACHE.put(key, err, 1024)
            raise
        nbytes = out.signal.nbytes + (0 if out.bad is None else out.bad.nbytes)
        PROCESSED_CACHE.put(key, out, nbytes)
        return out

    def _process_record(self, path: Path) -> _Processed:
        rec = load_record(path, fs=self.input_fs, lead_names=self.lead_names, cache=False)
        idx = select_leads(rec.names, self.leads, self.lead_fallback, rec.path)
        x = np.array(rec.signal[idx], dtype=np.float64)
        bad = ~np.isfinite(x)
        if bad.any():
            x = _interpolate_gaps(x, bad, rec.path)
        y = self._filter_resample(x, rec.fs, rec.path)
        y.flags.writeable = False
        names = [rec.names[i] for i in idx]
        y64 = y.astype(np.float64)
        mean, std = (
            y64.mean(axis=1, keepdims=True),
            np.maximum(y64.std(axis=1, keepdims=True), 1e-6),
        )
        return _Processed(y, bad if bad.any() else None, names, rec.fs, rec.n_samples, mean, std)

    def _params(self) -> tuple[Any, ...]:
        leads = None if self.leads is None else repr(self.leads)
        names = None if self.lead_names is None else tuple(self.lead_names)
        return (
            leads,
            self.lead_fallback,
            self.fs,
            self.input_fs,
            names,
            self.bandpass,
            self.filter_order,
        )

    def _filter_resample(self, x: np.ndarray, fs_in: float, path: str) -> np.ndarray:
        from scipy import signal as ss

        x = np.asarray(x, dtype=np.float64)
        if self.bandpass is not None:
            sos = _butter(self.bandpass, self.filter_order, fs_in)
            if sos is not None:
                low = self.bandpass[0]
                pad = max(3 * (2 * len(sos) + 1), int(3 * fs_in / low) if low > 0 else 0)
                pad = min(pad, x.shape[-1] - 1)
                if pad < 3 * (2 * len(sos) + 1):
                    raise DataError(
                        f"signal of {x.shape[-1]} samples is too short to band-pass", path=path
                    )
                x = ss.sosfiltfilt(sos, x, axis=-1, padlen=pad)
        up, down = self._ratio(fs_in)
        if up != down:
            x = ss.resample_poly(x, up, down, axis=-1, padtype="line")
        return np.ascontiguousarray(x, dtype=np.float32)

    def _ratio(self, fs_in: float) -> tuple[int, int]:
        return (1, 1) if self.fs is None else _ratio(self.fs, fs_in)

    def _fix_length(self, x: np.ndarray, path: str) -> np.ndarray:
        if self.length is None or x.shape[1] == self.length:
            return np.ascontiguousarray(x, dtype=np.float32)
        if self.length_policy == "error":
            raise DataError(
                f"signal has {x.shape[1]} samples (after resampling), "
                f"expected length {self.length}",
                path=path,
            )
        return _crop_pad(x, self.length)

    # -- stage 2 -------------------------------------------------------------------------
    def _rate(self, raw: np.ndarray) -> float:
        """The sampling rate of a :meth:`read` output: the contract between read and fit /
        transform is the :class:`SignalArray` it returns, which always carries its rate."""
        if not isinstance(raw, SignalArray) or raw.fs is None:
            raise TypeError(
                f"modality {self.name!r}: the signal processor takes the SignalArray its read() "
                f"returns (it carries the sampling rate), not {type(raw).__name__}"
            )
        return raw.fs

    def fit(self, raws: Sequence[SignalArray | None]) -> SignalProcessor:
        sigs = [r for r in raws if r is not None]
        if not sigs:
            raise ValueError(f"modality {self.name!r}: no training signal to fit on")
        channels = {r.shape[0] for r in sigs}
        if len(channels) > 1:
            raise ConfigError(
                f"modality {self.name!r}: records have {sorted(channels)} leads; "
                "set preprocess.leads"
            )
        self.n_channels_ = channels.pop()
        rates = {self._rate(r) for r in sigs}
        if len(rates) > 1:
            raise ConfigError(
                f"modality {self.name!r}: training records are sampled at {sorted(rates)} Hz; "
                "set preprocess.fs to resample them to one rate"
            )
        if self.fs is None:
            self.fs_ = rates.pop()
        if self.length is None:
            self.length_ = Counter(r.shape[1] for r in sigs).most_common(1)[0][0]
        if self.standardize in ("fit", "global"):
            self._fit_scaling(sigs)
        return self

    def _fit_scaling(self, sigs: Sequence[np.ndarray]) -> None:
        fixed = [_crop_pad(r, self.length_) if self.length_ else r for r in sigs]
        if self.standardize == "global":  # one scaler: every lead pooled, one value per lead
            pooled = [r.reshape(1, -1) for r in fixed]
            (mean,), (std,) = channel_mean_std(pooled)
            c = fixed[0].shape[0]
            self.mean_, self.std_ = [mean] * c, [std] * c
            return
        self.mean_, self.std_ = channel_mean_std(fixed)

    def transform(self, raw: SignalArray) -> torch.Tensor:
        fs = self._rate(raw)
        if self.fs_ is not None and fs != self.fs_:
            raise DataError(
                f"signal sampled at {fs:g} Hz, the model was trained at {self.fs_:g} Hz; "
                "set preprocess.fs to resample"
            )
        x = np.asarray(raw, dtype=np.float32)
        if self.n_channels_ is not None and x.shape[0] != self.n_channels_:
            raise DataError(f"signal has {x.shape[0]} leads, the model expects {self.n_channels_}")
        if self.length_ is not None and x.shape[1] != self.length_:
            x = _crop_pad(x, self.length_)
        t = torch.from_numpy(np.ascontiguousarray(x))
        if self.mean_ is not None and self.std_ is not None:
            t = (t - torch.tensor(self.mean_).view(-1, 1)) / torch.tensor(self.std_).view(-1, 1)
        return t.float()

    def missing(self) -> torch.Tensor:
        if self.n_channels_ is None or self.length_ is None:
            raise RuntimeError(
                f"modality {self.name!r}: fit the signal processor (or set leads and length) first"
            )
        return torch.zeros((self.n_channels_, self.length_))

    def train_input(
        self, x: torch.Tensor, present: bool, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A present row augmented (and cropped); an absent row's placeholder cut to ``crop``."""
        return self.augment(x, generator) if present else head_crop(x, self.opts.crop)

    def augment(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A random crop (``crop``), then random amplitude scale, baseline wander, noise and
        shift on a copy of ``x`` (C, L)."""
        a = self.opts.augment
        g = generator
        if self.opts.crop:
            x = random_crop(x, self.opts.crop, g)

        def u() -> float:
            return uniform(g)

        if a.scale:
            x = x * (1 + (2 * u() - 1) * a.scale)
        if a.wander and self.fs_:
            t = torch.arange(x.shape[-1], dtype=x.dtype) / self.fs_
            freq, phase, amp = 0.05 + 0.45 * u(), 2 * math.pi * u(), u() * a.wander
            x = x + amp * torch.sin(2 * math.pi * freq * t + phase)
        if a.noise:
            x = x + a.noise * torch.randn(x.shape, generator=g, dtype=x.dtype)
        if a.shift:
            k = int(torch.randint(-a.shift, a.shift + 1, (), generator=g))
            x = _shift(x, k)
        return x

    def info(self) -> dict[str, Any]:
        """``length``: samples per input; with ``windows``, their geometry (the model encodes
        windows of ``windows["length"]`` samples)."""
        out = {"in_channels": self.n_channels_, "length": self.length_, "fs": self.fs_}
        windows = window_info(self.opts)
        return out if windows is None else {**out, "windows": windows}

    @property
    def is_fitted(self) -> bool:
        if self.n_channels_ is None or self.length_ is None:
            return False
        return self.standardize not in ("fit", "global") or self.mean_ is not None


# -- helpers --------------------------------------------------------------------------------


class SignalArray(np.ndarray):
    """A decoded (C, L) float32 signal and its sampling rate: what :meth:`SignalProcessor.read`
    returns and ``fit`` / ``transform`` take, so ``read`` stays stateless and ``fit`` learns the
    rate from the cached reads. The rate survives slicing, copies, pickling (worker processes)
    and :class:`~medmodal.data.cache.RawSpill`; a plain array viewed as one has ``fs`` None
    and is refused by the processor."""

    fs: float | None

    def __new__(cls, x: np.ndarray, fs: float) -> SignalArray:
        obj = np.ascontiguousarray(x, dtype=np.float32).view(cls)
        obj.fs = float(fs)
        return obj

    def __array_finalize__(self, obj: Any) -> None:
        self.fs = obj.fs if isinstance(obj, SignalArray) else None

    def __reduce__(self) -> tuple[Any, ...]:
        rebuild, args, state = super().__reduce__()[:3]
        return rebuild, args, (state, self.fs)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        array_state, self.fs = state
        super().__setstate__(array_state)


@lru_cache(maxsize=64)
def _ratio(fs_out: float, fs_in: float) -> tuple[int, int]:
    """Resampling factors up/down (a fraction with denominator <= 1000)."""
    if fs_out == fs_in:
        return 1, 1
    r = Fraction(fs_out / fs_in).limit_denominator(1000)
    return r.numerator, r.denominator


def _butter(band: tuple[float, float], order: int, fs: float) -> np.ndarray | None:
    """Second-order sections of a Butterworth band-pass (or high/low-pass at the edges)."""
    from scipy import signal as ss

    low, high = band
    nyq = fs / 2
    has_low, has_high = low > 0, high < nyq * 0.99
    if has_low and has_high:
        return ss.butter(order, [low, high], btype="bandpass", fs=fs, output="sos")
    if has_low:
        return ss.butter(order, low, btype="highpass", fs=fs, output="sos")
    if has_high:
        return ss.butter(order, high, btype="lowpass", fs=fs, output="sos")
    return None


def _interpolate_gaps(x: np.ndarray, bad: np.ndarray, path: str) -> np.ndarray:
    """Fill NaN/Inf runs linearly so a whole-record filter does not spread them."""
    x = x.copy()
    t = np.arange(x.shape[1])
    for c in range(x.shape[0]):
        ok = ~bad[c]
        if not ok.any():
            x[c] = 0.0
        elif not ok.all():
            x[c, ~ok] = np.interp(t[~ok], t[ok], x[c, ok])
    return x


def _zscore(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    mean = x.mean(axis=1, keepdims=True)
    std = x.std(axis=1, keepdims=True)
    return ((x - mean) / np.maximum(std, 1e-6)).astype(np.float32)


def _crop_pad(x: np.ndarray, length: int) -> np.ndarray:
    """Centre crop or symmetric zero pad along time to ``length``."""
    n = x.shape[1]
    if n >= length:
        s = (n - length) // 2
        return np.ascontiguousarray(x[:, s : s + length], dtype=np.float32)
    left = (length - n) // 2
    return np.pad(x, ((0, 0), (left, length - n - left))).astype(np.float32)


def _shift(x: torch.Tensor, k: int) -> torch.Tensor:
    """Shift along time by ``k`` samples, repeating the edge sample."""
    if k == 0:
        return x
    if k > 0:
        return torch.cat([x[..., :1].expand(*x.shape[:-1], k), x[..., :-k]], dim=-1)
    return torch.cat([x[..., -k:], x[..., -1:].expand(*x.shape[:-1], -k)], dim=-1)


@PROCESSORS.register("signal")
def signal(name: str, spec: ModalitySpec) -> ModalityProcessor:
    """Biosignals (ECG ...): WFDB / .npy / .csv, windows, band-pass, resample, standardise."""
    return SignalProcessor(name, spec)
