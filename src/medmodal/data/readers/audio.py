"""Audio reader: WAV / FLAC / OGG through soundfile, deterministic resampling through soxr.

:func:`read_audio` returns a mono ``float32`` wave in [-1, 1] (full scale) and its
sample rate; :func:`check_audio` rejects silent and clipped recordings. Every
failure is a :class:`~medmodal.errors.DataError` naming the file.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from medmodal.data.readers.blob import Blob, Source, source_of
from medmodal.data.readers.budget import check_decode
from medmodal.errors import DataError

RESAMPLE_TYPE = "soxr_hq"  # deterministic, band-limited (librosa's default)
SILENT_PEAK = 1e-4
CLIP_LEVEL = 0.999
# The real heart-sound set has up to 1.4% of samples at full scale in 12 mildly clipped
# AS recordings: 5% keeps them, while a grossly clipped recording (tens of %) is rejected.
CLIP_FRACTION = 0.05
# Peak bytes per decoded sample: the float32 frames, the mono mix, the resampled wave and the
# features computed from it.
BYTES_PER_SAMPLE = 24


def read_audio(path: str | Path | Blob, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Read ``path`` as a mono float32 wave; resample to ``sample_rate`` when given.

    Multi-channel files are averaged to mono. Raises DataError for a missing,
    empty, unreadable, truncated or zero-length file and for NaN/Inf samples. A
    :class:`Blob` (an upload in memory) is decoded from its bytes.
    """
    path = source_of(path)
    wave, sr = _decode(path)
    if sample_rate is not None:
        wave = resample_audio(wave, sr, int(sample_rate))
        sr = int(sample_rate)
    return wave, sr


def resample_audio(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a 1D wave (no-op when the rates match); deterministic."""
    if int(orig_sr) == int(target_sr):
        return wave
    import librosa

    out = librosa.resample(
        wave, orig_sr=int(orig_sr), target_sr=int(target_sr), res_type=RESAMPLE_TYPE
    )
    return np.ascontiguousarray(out, dtype=np.float32)


def check_audio(
    wave: np.ndarray,
    sr: int,
    path: str | Path | None = None,
    *,
    silent: bool = True,
    clipped: bool = True,
    silent_peak: float = SILENT_PEAK,
    clip_level: float = CLIP_LEVEL,
    clip_fraction: float = CLIP_FRACTION,
) -> None:
    """Raise DataError for a silent or clipped recording (checks can be turned off).

    * silent: peak ``|x|`` below ``silent_peak`` of full scale (all zeros included);
    * clipped: more than ``clip_fraction`` of the samples at ``|x| >= clip_level``.
    """
    if wave.size == 0:
        raise DataError("zero-length recording", path=path)
    peak = float(np.max(np.abs(wave)))
    if silent and peak < silent_peak:
        raise DataError(f"silent recording (peak {peak:.2g} of full scale)", path=path)
    if clipped:
        frac = float(np.mean(np.abs(wave) >= clip_level))
        if frac > clip_fraction:
            raise DataError(
                f"clipped recording: {100 * frac:.1f}% of samples at full scale "
                f"(limit {100 * clip_fraction:g}%)",
                path=path,
            )


# -- decoding ---------------------------------------------------------------------------
def _open_checked(path: Source) -> Any:
    """A path or an in-memory file for soundfile, after the existence/size/WAV-length checks."""
    if isinstance(path, Blob):
        if not path.data:
            raise DataError("empty audio file (0 bytes)", path=path)
        _check_wav_length(path.open(), len(path.data), path)
        return path.open()
    if not path.is_file():
        raise DataError("audio file not found" if not path.exists() else "not a file", path=path)
    size = path.stat().st_size
    if size == 0:
        raise DataError("empty audio file (0 bytes)", path=path)
    with open(path, "rb") as fh:
        _check_wav_length(fh, size, path)
    return str(path)


def _decode(path: Source) -> tuple[np.ndarray, int]:
    import soundfile as sf

    src = _open_checked(path)
    try:
        with sf.SoundFile(src) as fh:
            sr = int(fh.samplerate)
            declared = fh.frames
            count = max(int(declared), 0) * int(fh.channels)
            what = f"{declared:,}-frame {fh.channels}-channel recording"
            check_decode("samples", count, count * BYTES_PER_SAMPLE, path, what)
            data = fh.read(dtype="float32", always_2d=True)
    except DataError:
        raise
    except (sf.SoundFileError, RuntimeError, ValueError, OSError, struct.error) as exc:
        raise DataError(f"unreadable or corrupt audio: {_first_line(exc)}", path=path) from None
    if data.shape[0] == 0:
        raise DataError("zero-length recording (no audio frames)", path=path)
    if 0 < declared and data.shape[0] < declared:
        raise DataError(
            f"truncated audio: header declares {declared} frames, decoded {data.shape[0]}",
            path=path,
        )
    if sr <= 0:
        raise DataError(f"invalid sample rate {sr}", path=path)
    if not np.all(np.isfinite(data)):
        raise DataError("audio contains NaN or Inf samples", path=path)
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return np.ascontiguousarray(wave, dtype=np.float32), sr


def _check_wav_length(fh: BinaryIO, size: int, path: Source) -> None:
    """A RIFF/WAVE whose ``data`` chunk is shorter than declared is truncated.

    libsndfile silently decodes what is there, so the chunk sizes are checked here.
    Streaming writers' placeholder sizes (0 / 0xFFFFFFFF) are accepted.
    """
    head = fh.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    pos = 12
    while pos + 8 <= size:
        fh.seek(pos)
        chunk_id, chunk_len = struct.unpack("<4sI", fh.read(8))
        if chunk_id == b"data":
            have = size - pos - 8
            if chunk_len not in (0, 0xFFFFFFFF) and have < chunk_len:
                raise DataError(
                    f"truncated WAV: header declares {chunk_len} bytes of audio, file holds {have}",
                    path=path,
                )
            return
        pos += 8 + chunk_len + (chunk_len & 1)
    # No data chunk found: soundfile reports the file as unreadable.


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
