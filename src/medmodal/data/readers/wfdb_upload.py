"""A WFDB record uploaded as files held in memory: its header and the signal files it names.

The header is parsed here (record line, one line per signal) and the signal files are decoded
with NumPy, so nothing is written to disk. Formats 16, 61, 80, 24, 32 and 212 (MIT-BIH)
are read, one sample per frame; others (difference, FLAC, multi-frequency) are refused
naming the format. The sizes in the header are checked against the decode limits before any
sample is decoded. Values are physical, in mV, as :func:`~medmodal.data.readers.signal.read_signal`
gives them for a record on disk: ``(digital - baseline) / gain``, invalid samples NaN.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from medmodal.data.readers.blob import Blob
from medmodal.data.readers.budget import check_decode
from medmodal.errors import DataError

# Bytes per sample (per signal of a frame) of the readable formats; 212 packs two in three.
FORMAT_BYTES = {"16": 2.0, "61": 2.0, "80": 1.0, "24": 3.0, "32": 4.0, "212": 1.5}
INVALID = {"16": -32768, "61": -32768, "80": -128, "24": -(1 << 23), "32": -(1 << 31), "212": -2048}
TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3}
MAX_SIGNALS = 1024
BYTES_PER_SAMPLE = 56  # digital int32, float64 physical, float32 result, processing temporaries
_FORMAT = re.compile(r"^(\d+)(x\d+)?(:\d+)?(\+\d+)?$")
_GAIN = re.compile(r"^([-+0-9.eE]+)(\(([-+]?\d+)\))?(/(\S+))?$")


@dataclass(frozen=True)
class Signal:
    file: str
    fmt: str
    offset: int
    gain: float
    baseline: int
    units: str
    name: str


def read_wfdb_upload(blob: Blob) -> tuple[np.ndarray, float, list[str]]:
    """(signal (C, T) float32 in mV, fs, lead names) of a header upload with its signal files
    (``blob.files``, by the file names the header gives)."""
    fs, length, signals = parse_header(blob)
    check_decode("samples", len(signals) * length, len(signals) * length * BYTES_PER_SAMPLE,
                 blob, f"{len(signals)}-lead, {length:,}-sample WFDB record")  # fmt: skip
    out = np.empty((len(signals), length), dtype=np.float32)
    for file in dict.fromkeys(s.file for s in signals):
        idx = [i for i, s in enumerate(signals) if s.file == file]
        digital = _decode_file(blob, file, [signals[i] for i in idx], length)
        for j, i in enumerate(idx):
            s = signals[i]
            x = (digital[:, j].astype(np.float64) - s.baseline) / s.gain
            x[digital[:, j] == INVALID[s.fmt]] = np.nan
            out[i] = x * TO_MV.get(s.units.lower(), 1.0)
    return out, fs, [s.name for s in signals]


def parse_header(blob: Blob) -> tuple[float, int, list[Signal]]:
    """(fs, samples per signal, signals) of the header text; DataError naming what is wrong."""
    try:
        text = blob.data.decode("ascii")
    except UnicodeDecodeError:
        raise DataError("WFDB header is not ASCII text", path=blob) from None
    lines = [x.split() for x in text.splitlines() if x.strip() and not x.lstrip().startswith("#")]
    if not lines or len(lines[0]) < 2 or "/" in lines[0][0] or not lines[0][1].isdigit():
        raise DataError("WFDB header: no record line (expected 'name n_signals fs n_samples'; "
                        "multi-segment records are not read from uploads)", path=blob)  # fmt: skip
    n_sig = int(lines[0][1])
    if not 1 <= n_sig <= MAX_SIGNALS or len(lines) < 1 + n_sig:
        raise DataError(f"WFDB header lists {n_sig} signals and {len(lines) - 1} signal lines "
                        f"(1 to {MAX_SIGNALS} signals)", path=blob)  # fmt: skip
    fs, length = _record_fields(lines[0], blob)
    return fs, length, [_signal(line, blob) for line in lines[1 : 1 + n_sig]]


def _record_fields(fields: list[str], blob: Blob) -> tuple[float, int]:
    try:
        fs = float(fields[2].split("/")[0]) if len(fields) > 2 else 250.0
        length = int(fields[3]) if len(fields) > 3 else -1
    except ValueError:
        raise DataError(f"WFDB record line {' '.join(fields)!r} is malformed", path=blob) from None
    if not (0 < fs < 1e7) or length <= 0:
        raise DataError("WFDB header: needs a positive sampling rate and number of samples "
                        f"(got fs {fs:g}, {length} samples)", path=blob)  # fmt: skip
    return fs, length


def _signal(fields: list[str], blob: Blob) -> Signal:
    fmt_match = _FORMAT.match(fields[1]) if len(fields) > 1 else None
    if fmt_match is None:
        raise DataError(f"WFDB signal line {' '.join(fields)!r} has no format", path=blob)
    fmt, frame, skew, offset = fmt_match.groups()
    if fmt not in FORMAT_BYTES or (frame and frame != "x1") or (skew and skew != ":0"):
        raise DataError(
            f"WFDB format {fields[1]} is not read from uploads (formats "
            f"{', '.join(FORMAT_BYTES)}, one sample per frame); upload the signal as .npy or .csv",
            path=blob,
        )
    gain, baseline, units = _gain(fields, blob)
    name = " ".join(fields[8:]) if len(fields) > 8 else str(fields[0])
    return Signal(fields[0], fmt, int((offset or "+0")[1:]), gain, baseline, units, name)


def _gain(fields: list[str], blob: Blob) -> tuple[float, int, str]:
    """(gain, baseline, units): WFDB defaults are gain 200, baseline = ADC zero, mV."""
    try:
        zero = int(fields[4]) if len(fields) > 4 else 0
        m = _GAIN.match(fields[2]) if len(fields) > 2 else None
        if len(fields) > 2 and m is None:
            raise ValueError
        gain = float(m.group(1)) if m else 200.0
        baseline = int(m.group(3)) if m and m.group(3) is not None else zero
    except ValueError:
        raise DataError(f"WFDB signal line {' '.join(fields)!r} is malformed", path=blob) from None
    if not np.isfinite(gain) or gain == 0:
        gain = 200.0
    return gain, baseline, (m.group(5) if m and m.group(5) else "mV")


def _decode_file(blob: Blob, file: str, sigs: list[Signal], length: int) -> np.ndarray:
    """(length, len(sigs)) int32 digital samples of one signal file (frames interleaved)."""
    files: Mapping[str, bytes] = blob.files or {}
    if file not in files:
        raise DataError(f"WFDB header names signal file {file!r}; upload it in the same part "
                        f"(uploaded: {', '.join(files) or 'none'})", path=blob)  # fmt: skip
    fmts = {s.fmt for s in sigs}
    if len(fmts) != 1:
        raise DataError(f"signal file {file!r} mixes formats {sorted(fmts)}", path=blob)
    fmt, n = fmts.pop(), len(sigs)
    count = length * n
    need = int(np.ceil(count * FORMAT_BYTES[fmt]))
    raw = files[file][sigs[0].offset :]
    if len(raw) < need:
        raise DataError(f"truncated signal file {file!r}: {len(raw)} bytes, the header's "
                        f"{length:,} samples x {n} signals need {need}", path=blob)  # fmt: skip
    return _samples(np.frombuffer(raw, dtype=np.uint8, count=need), fmt, count).reshape(length, n)


def _samples(b: np.ndarray, fmt: str, count: int) -> np.ndarray:
    if fmt == "16":
        return b.view("<i2").astype(np.int32)
    if fmt == "61":
        return b.view(">i2").astype(np.int32)
    if fmt == "80":
        return b.astype(np.int32) - 128
    if fmt == "32":
        return b.view("<i4").astype(np.int32)
    if fmt == "24":
        t = b.reshape(-1, 3).astype(np.int32)
        v = t[:, 0] | (t[:, 1] << 8) | (t[:, 2] << 16)
        return np.where(v >= 1 << 23, v - (1 << 24), v)
    t = np.concatenate([b, np.zeros((-len(b)) % 3, dtype=np.uint8)]).reshape(-1, 3)
    t = t.astype(np.int32)  # 212: two 12-bit samples in three bytes
    pair = np.stack([t[:, 0] | ((t[:, 1] & 0x0F) << 8), t[:, 2] | ((t[:, 1] & 0xF0) << 4)], 1)
    v = pair.reshape(-1)[:count]
    return np.where(v >= 2048, v - 4096, v)
