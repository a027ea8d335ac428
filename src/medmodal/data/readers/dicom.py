"""DICOM files and single-series directories through pydicom.

Pipeline for grayscale images: decode -> modality LUT (rescale slope/intercept, e.g. to
Hounsfield units) -> VOI (a given ``window``, else the file's VOI LUT or window, else the
min-max of the image) -> [0, 1], MONOCHROME1 inverted so that higher is always brighter.
Colour images (RGB, YBR_*, PALETTE COLOR) become 3-channel RGB scaled by their bit depth;
a ``window`` does not apply to them.

Arrays are float32, channel first: (C, H, W) for one frame, (C, F, H, W) for all frames of a
multi-frame file, (C, D, H, W) for a series. Every failure is a :class:`DataError` naming
the file. No patient-identifying header field is read into messages or returned.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    convert_color_space,
    get_decoder,
)
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medmodal.data.readers.blob import Blob, Source, source_of
from medmodal.data.readers.budget import check_decode
from medmodal.data.readers.table import image_reader
from medmodal.data.readers.window import check_window
from medmodal.errors import ConfigError, DataError

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
COLOUR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"}
META_FIELDS = (
    "Modality",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "BitsStored",
    "PixelSpacing",
    "SliceThickness",
    "WindowCenter",
    "WindowWidth",
    "RescaleSlope",
    "RescaleIntercept",
)
Window = Sequence[float] | None


class NoPreambleWarning(UserWarning):
    """A DICOM file read without its preamble / 'DICM' marker (pydicom's ``force=True``)."""


Frames = int | str | None
# Peak bytes a decoded value costs: the stored array, modality values and a temporary (float64),
# the float32 result.
BYTES_PER_VALUE = 24


# --------------------------------------------------------------------------- public API


# Priority: DICOM's marker sits after a free 128-byte preamble, which may hold another format's
# header (DICOM-TIFF dual files put a TIFF header there), so "DICM" is checked before any magic.
@image_reader(
    "dicom",
    suffixes=(".dcm", ".dicom", ".ima"),
    sniff=lambda head: head[128:132] == b"DICM",
    options=("window", "frames", "slice_index"),
    priority=10,
)
def read_dicom(
    path: str | Path | Blob,
    window: Window = None,
    frames: Frames = None,
    slice_index: Frames = None,
) -> np.ndarray:
    """Read one DICOM file as float32 in [0, 1], channel first.

    ``window=[center, width]`` (in modality units, e.g. HU) overrides the file's VOI.
    ``frames``: ``None`` keeps every frame of a multi-frame file (C, F, H, W); an int
    (0-based) or ``"middle"`` picks one frame (C, H, W). Single-frame files give (C, H, W).
    ``slice_index`` (the 3D-as-2D image option) picks a frame when ``frames`` is not given.
    """
    path = source_of(path)
    frames = slice_index if frames is None else frames
    win = check_window(window)
    ds = _open(path)
    n_frames = _n_frames(ds)
    index = None if frames is None else _frame_index(frames, n_frames, path)
    # Min-max needs every frame (one scale for the volume); a window needs only the one asked.
    decode_all = index is None or _needs_volume_stats(ds, win)
    check_size(ds, n_frames if decode_all else 1, path)
    raw, pi = _decode(ds, path, index=None if decode_all else index)
    out = _to_unit(raw, ds, win, pi, path)
    if index is None:
        return out if n_frames > 1 else out[:, 0]
    return out[:, index if decode_all else 0]


def read_dicom_series(
    directory: str | Path, window: Window = None, frames: Frames = None
) -> np.ndarray:
    """Read a directory of single-frame DICOM slices of one series as (C, D, H, W).

    Slices are ordered by ImagePositionPatient projected on the slice normal (ascending),
    falling back to InstanceNumber. The VOI (file window or min-max) is taken once for the
    whole volume, from the first slice. ``frames`` (int or ``"middle"``) returns one slice
    (C, H, W) of the ordered volume.
    """
    directory = Path(directory)
    win = check_window(window)
    if not directory.is_dir():
        raise DataError("DICOM series directory not found", path=directory)
    files = sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError("DICOM series directory holds no files", path=directory)
    slices = [(p, _open(p)) for p in files]
    _check_series(slices, directory)
    slices = _order_slices(slices, directory)
    check_size(slices[0][1], len(slices), directory)
    index = None if frames is None else _frame_index(frames, len(slices), directory)
    decoded = [_decode(ds, p) for p, ds in slices]
    pis = {pi for _, pi in decoded}
    if len(pis) > 1:
        raise DataError(f"series mixes photometric interpretations {sorted(pis)}", path=directory)
    pi = pis.pop()
    if pi in COLOUR or pi == "PALETTE COLOR":
        parts = [
            _colour_to_unit(raw, ds, pi, p)
            for (raw, _), (p, ds) in zip(decoded, slices, strict=True)
        ]
        out = np.concatenate(parts, axis=1)
    else:
        values = [_modality(raw, ds, p) for (raw, _), (p, ds) in zip(decoded, slices, strict=True)]
        out = _grey_to_unit(np.concatenate(values, axis=0), slices[0][1], win, pi)
    return out if index is None else out[:, index]


def dicom_meta(path: str | Path) -> dict[str, Any]:
    """Non-identifying technical header fields (absent ones are left out); no pixel decode."""
    path = Path(path)
    ds = _open(path, pixels=False)
    meta: dict[str, Any] = {}
    for key in META_FIELDS:
        value = ds.get(key)
        if value is None or value == "":
            continue
        meta[key] = _plain(value)
    ts = _transfer_syntax(ds)
    if ts is not None:
        meta["TransferSyntax"] = ts.name
    return meta


# --------------------------------------------------------------------------- reading


def _open(path: Source, *, pixels: bool = True) -> Dataset:
    """``dcmread`` with every failure turned into a one-line DataError."""
    if isinstance(path, Path) and not path.exists():
        raise DataError("file not found", path=path)
    if isinstance(path, Path) and not path.is_file():
        raise DataError("not a regular file", path=path)
    try:
        src = path.open() if isinstance(path, Blob) else path
        return dcmread(src, force=False, stop_before_pixels=not pixels)
    except InvalidDicomError:
        if isinstance(path, Blob):  # an upload must be a Part 10 file (it is de-identified first)
            raise DataError("not a DICOM file (no 'DICM' file meta header)", path=path) from None
    except Exception as exc:  # pydicom raises many types for damaged headers
        raise DataError(f"cannot parse DICOM header: {_one_line(exc)}", path=path) from None
    assert not isinstance(path, Blob)
    return _open_without_preamble(path, pixels)


def _open_without_preamble(path: Path, pixels: bool) -> Dataset:
    """A file without the 128-byte preamble and 'DICM' (older or raw data sets), read as pydicom's
    ``force=True`` does, with a warning; DataError unless it holds a SOP class or pixel data."""
    try:
        with warnings.catch_warnings():  # pydicom's own warnings may quote header values
            warnings.simplefilter("ignore")
            ds = dcmread(path, force=True, stop_before_pixels=not pixels)
    except Exception:
        ds = None
    if ds is None or not ("SOPClassUID" in ds or any(k in ds for k in PIXEL_KEYWORDS)):
        raise DataError("not a DICOM file (no 'DICM' file meta header)", path=path) from None
    warnings.warn(
        f"{path.name}: DICOM file without the 128-byte preamble and 'DICM' marker; read anyway "
        "(transfer syntax taken from its encoding)",
        NoPreambleWarning,
        stacklevel=4,
    )
    return ds


def check_size(ds: Dataset, frames: int, path: Source) -> None:
    """The decode limits (:mod:`.budget`) from the header (rows, columns, samples per pixel,
    the frames to decode), before any pixel is decoded."""
    try:
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        spp = max(int(ds.get("SamplesPerPixel") or 1), 1)
    except (TypeError, ValueError):
        raise DataError(
            "DICOM Rows / Columns / SamplesPerPixel are not numbers", path=path
        ) from None
    if rows < 0 or cols < 0:
        raise DataError(f"DICOM image size {rows} x {cols} is negative", path=path)
    nbytes = frames * rows * cols * spp * BYTES_PER_VALUE
    if frames <= 1:
        check_decode("pixels", rows * cols, nbytes, path, f"{rows} x {cols} DICOM image")
    else:
        what = f"{frames}-frame {rows} x {cols} DICOM image"
        check_decode("voxels", frames * rows * cols, nbytes, path, what)


def _transfer_syntax(ds: Dataset) -> Any:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    return ts or None


def _ensure_transfer_syntax(ds: Dataset, path: Source) -> Any:
    """The file's transfer syntax; guessed from the encoding when the meta lacks it."""
    ts = _transfer_syntax(ds)
    if ts is not None:
        return ts
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        raise DataError("DICOM file declares no transfer syntax", path=path)
    guess = (
        ImplicitVRLittleEndian
        if implicit
        else ExplicitVRLittleEndian
        if little
        else ExplicitVRBigEndian
    )
    ds.file_meta.TransferSyntaxUID = guess
    return guess


def _n_frames(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames") or 1), 1)
    except (TypeError, ValueError):
        return 1


def _frame_index(frames: int | str, n: int, path: Source) -> int:
    if isinstance(frames, str):
        if frames != "middle":
            raise ConfigError(f"frames must be an int or 'middle', got {frames!r}")
        return n // 2
    if isinstance(frames, bool) or not isinstance(frames, int | np.integer):
        raise ConfigError(f"frames must be an int or 'middle', got {frames!r}")
    if not 0 <= int(frames) < n:
        raise DataError(f"frame {frames} out of range ({n} frame(s))", path=path)
    return int(frames)


def _decode(ds: Dataset, path: Source, index: int | None = None) -> tuple[np.ndarray, str]:
    """Decode pixels (YBR converted to RGB) -> ((F, H, W) or (F, H, W, 3), photometric)."""
    if not any(k in ds for k in PIXEL_KEYWORDS):
        modality = ds.get("Modality")
        hint = f"Modality {modality}" if modality else "truncated or not an image file?"
        raise DataError(f"DICOM file has no pixel data ({hint})", path=path)
    ts = _ensure_transfer_syntax(ds, path)
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise DataError(f"unsupported transfer syntax {ts.name}", path=path) from None
    if not decoder.is_available:
        raise DataError(
            f"cannot decode {ts.name} pixel data: no decoder plugin installed; "
            f"install one of: {_install_hint(decoder.missing_dependencies)}",
            path=path,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr, info = decoder.as_array(ds, index=index, as_rgb=True)
    except Exception as exc:  # truncated / corrupt / inconsistent pixel module
        raise DataError(_decode_reason(exc, ts), path=path) from None
    pi = str(info.get("photometric_interpretation") or ds.get("PhotometricInterpretation") or "")
    framed = arr.ndim == 2 or (arr.ndim == 3 and int(info.get("samples_per_pixel", 1)) > 1)
    if framed:  # one frame: add the frame axis
        arr = arr[None]
    return arr, pi


def _decode_reason(exc: Exception, ts: Any) -> str:
    msg = _one_line(exc)
    if "less than expected" in msg or "truncat" in msg.lower():
        return f"truncated pixel data: {msg}"
    if getattr(ts, "is_compressed", False):  # every installed plugin tried and failed
        return f"cannot decode {ts.name} pixel data (corrupt or unsupported variant?): {msg}"
    return f"cannot decode pixel data (corrupt file?): {msg}"


def _install_hint(missing: Sequence[str]) -> str:
    """'gdcm - requires gdcm>=3.0.10' -> 'pip install python-gdcm>=3.0.10' (one per plugin)."""
    hints = []
    for line in missing:
        reqs = line.split("requires", 1)[-1].replace(" and ", " ").replace(",", " ").split()
        pkgs = ["python-gdcm" + r[4:] if r.startswith("gdcm") else r for r in reqs]
        pkgs = [p for p in pkgs if p != "numpy"]
        if pkgs:
            hints.append("pip install " + " ".join(f"'{p}'" for p in pkgs))
    return " | ".join(hints) or "a pydicom pixel data plugin (pylibjpeg / python-gdcm)"


# --------------------------------------------------------------------------- intensities


def _to_unit(
    raw: np.ndarray, ds: Dataset, window: tuple[float, float] | None, pi: str, path: Source
) -> np.ndarray:
    """Decoded pixels (F, H, W[, 3]) -> (C, F, H, W) float32 in [0, 1]."""
    if pi in COLOUR or pi == "PALETTE COLOR":
        return _colour_to_unit(raw, ds, pi, path)
    return _grey_to_unit(_modality(raw, ds, path), ds, window, pi)


def _needs_volume_stats(ds: Dataset, window: tuple[float, float] | None) -> bool:
    """True when a grayscale image has no window at all (min-max over every frame)."""
    pi = str(ds.get("PhotometricInterpretation") or "")
    if not pi.startswith("MONOCHROME") or window is not None:
        return False
    return "VOILUTSequence" not in ds and _file_window(ds) is None


def _modality(raw: np.ndarray, ds: Dataset, path: Source) -> np.ndarray:
    """Stored values -> modality units (e.g. HU), float64, (F, H, W)."""
    pi = str(ds.get("PhotometricInterpretation") or "")
    if raw.ndim != 3 or not pi.startswith("MONOCHROME"):
        raise DataError(
            f"unsupported photometric interpretation {pi or '(missing)'} (pixel array {raw.shape})",
            path=path,
        )
    if "ModalityLUTSequence" in ds or "RescaleSlope" in ds or "RescaleIntercept" in ds:
        try:
            values = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
        except Exception as exc:
            raise DataError(
                f"invalid modality LUT / rescale: {_one_line(exc)}", path=path
            ) from None
    else:
        slope, intercept = _group_rescale(ds)
        values = raw.astype(np.float64) * slope + intercept
    if not np.isfinite(values).all():
        raise DataError("pixel data holds NaN or infinite values", path=path)
    return values


def _group_rescale(ds: Dataset) -> tuple[float, float]:
    """Rescale of enhanced multi-frame files (shared functional groups), else identity."""
    item = _shared_group_item(ds, "PixelValueTransformationSequence")
    if item is None:
        return 1.0, 0.0
    try:
        return float(item.get("RescaleSlope", 1.0)), float(item.get("RescaleIntercept", 0.0))
    except (TypeError, ValueError):
        return 1.0, 0.0


def _shared_group_item(ds: Dataset, keyword: str) -> Dataset | None:
    shared = ds.get("SharedFunctionalGroupsSequence")
    if not shared:
        return None
    seq = shared[0].get(keyword)
    return seq[0] if seq else None


def _grey_to_unit(
    values: np.ndarray, ds: Dataset, window: tuple[float, float] | None, pi: str
) -> np.ndarray:
    """Modality values (F, H, W) -> (1, F, H, W) in [0, 1], MONOCHROME1 inverted."""
    if window is not None:
        out = _apply_window(values, *window, function="LINEAR_EXACT")
    elif "VOILUTSequence" in ds and (lut := _voi_lut(values, ds)) is not None:
        out = lut
    elif (file_window := _file_window(ds)) is not None:
        out = _apply_window(values, *file_window)
    else:
        out = _min_max(values)
    if pi == "MONOCHROME1":
        out = 1.0 - out
    return np.ascontiguousarray(out[None], dtype=np.float32)


def _apply_window(
    x: np.ndarray, center: float, width: float, function: str = "LINEAR"
) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing onto [0, 1]."""
    if function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif function == "LINEAR_EXACT" or width <= 1:
        out = (x - center) / width + 0.5
    else:
        out = (x - (center - 0.5)) / (width - 1.0) + 0.5
    return np.clip(out, 0.0, 1.0)


def _file_window(ds: Dataset) -> tuple[float, float, str] | None:
    """First WindowCenter/Width (top level, else shared functional groups) and its function."""
    src: Dataset | None = ds if "WindowCenter" in ds else None
    if src is None:
        src = _shared_group_item(ds, "FrameVOILUTSequence")
    if src is None:
        return None
    try:
        center = float(_first(src.get("WindowCenter")))
        width = float(_first(src.get("WindowWidth")))
    except (TypeError, ValueError, IndexError):
        return None
    if not np.isfinite([center, width]).all() or width <= 0:
        return None
    function = str(src.get("VOILUTFunction") or "LINEAR").upper()
    return center, width, function


def _voi_lut(values: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """Apply the first VOI LUT; scale its output by the LUT's own output range."""
    try:
        desc = ds.VOILUTSequence[0].LUTDescriptor
        n_entries, first = int(desc[0]) or 65536, int(desc[1])
        span = apply_voi_lut(np.arange(first, first + n_entries), ds, index=0, prefer_lut=True)
        lo, hi = float(np.min(span)), float(np.max(span))
        mapped = apply_voi_lut(np.rint(values).astype(np.int64), ds, index=0, prefer_lut=True)
    except Exception:  # malformed LUT: fall back to the window / min-max
        return None
    if hi <= lo:
        return None
    return np.clip((mapped.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)


def _min_max(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros_like(x)
    return (x - lo) / (hi - lo)


def _colour_to_unit(raw: np.ndarray, ds: Dataset, pi: str, path: Source) -> np.ndarray:
    """(F, H, W, 3) RGB / YBR or (F, H, W) palette indices -> (3, F, H, W) RGB in [0, 1]."""
    try:
        if pi == "PALETTE COLOR":
            rgb = apply_color_lut(raw, ds)
            scale = float(np.iinfo(rgb.dtype).max) if rgb.dtype.kind in "ui" else 1.0
        else:
            rgb = raw if pi == "RGB" else convert_color_space(raw, pi, "RGB")
            scale = float(2 ** int(ds.get("BitsStored") or 8 * raw.dtype.itemsize) - 1)
    except Exception as exc:
        raise DataError(f"cannot convert {pi} pixels to RGB: {_one_line(exc)}", path=path) from None
    out = rgb.astype(np.float64) / scale
    if not np.isfinite(out).all():
        raise DataError("pixel data holds NaN or infinite values", path=path)
    return np.ascontiguousarray(np.clip(np.moveaxis(out, -1, 0), 0.0, 1.0), dtype=np.float32)


# --------------------------------------------------------------------------- series


def _check_series(slices: list[tuple[Path, Dataset]], directory: Path) -> None:
    """One series, single-frame slices of one shape, else DataError."""
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in slices}
    if len(series) > 1:
        raise DataError(
            f"directory mixes {len(series)} DICOM series; put one series per directory",
            path=directory,
        )
    for p, ds in slices:
        if _n_frames(ds) > 1:
            raise DataError("multi-frame file inside a series directory", path=p)
    shapes = {(ds.get("Rows"), ds.get("Columns"), ds.get("SamplesPerPixel", 1)) for _, ds in slices}
    if len(shapes) > 1:
        desc = ", ".join(f"{r}x{c}x{s}" for r, c, s in sorted(shapes, key=str))
        raise DataError(f"slices have different shapes ({desc})", path=directory)


def _order_slices(
    slices: list[tuple[Path, Dataset]], directory: Path
) -> list[tuple[Path, Dataset]]:
    """Sort by position along the slice normal, else by InstanceNumber."""
    positions = _slice_positions(slices, directory)
    if positions is not None:
        keys: list[float] = positions
    elif all(ds.get("InstanceNumber") is not None for _, ds in slices):
        keys = [float(ds.InstanceNumber) for _, ds in slices]
    else:
        raise DataError(
            "cannot order slices: no ImagePositionPatient/ImageOrientationPatient "
            "or InstanceNumber",
            path=directory,
        )
    if len(set(keys)) < len(keys):
        raise DataError(
            "several slices share one position (mixed acquisitions or duplicates?)",
            path=directory,
        )
    order = np.argsort(keys, kind="stable")
    return [slices[i] for i in order]


def _slice_positions(slices: list[tuple[Path, Dataset]], directory: Path) -> list[float] | None:
    try:
        iops = [np.asarray(ds.ImageOrientationPatient, dtype=float) for _, ds in slices]
        ipps = [np.asarray(ds.ImagePositionPatient, dtype=float) for _, ds in slices]
    except (AttributeError, TypeError, ValueError):
        return None
    if any(o.shape != (6,) for o in iops) or any(p.shape != (3,) for p in ipps):
        return None
    if any(not np.allclose(o, iops[0], atol=1e-4) for o in iops):
        raise DataError("slices have different orientations", path=directory)
    normal = np.cross(iops[0][:3], iops[0][3:])
    return [round(float(np.dot(p, normal)), 4) for p in ipps]


# --------------------------------------------------------------------------- helpers


def _first(value: Any) -> Any:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        return value
    return value[0]


def _plain(value: Any) -> Any:
    """pydicom values -> JSON-friendly Python values."""
    if isinstance(value, str | bytes):
        return str(value)
    if isinstance(value, Sequence):
        return [_plain(v) for v in value]
    if isinstance(value, float | int):
        return int(value) if isinstance(value, int) else float(value)
    return str(value)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
