"""NIfTI-1/2 volumes (``.nii``, ``.nii.gz``) through nibabel.

Axis order. The volume is reoriented to the closest canonical (RAS+) orientation and then
returned as (C, D, H, W) with

* D: inferior -> superior (axial slice index),
* H: anterior -> posterior (image rows, top = anterior),
* W: patient right -> patient left (image columns, left = patient right),

so each D-slice is an axial image in the radiological view, the same layout as an axial
DICOM series from :func:`~medmodal.data.readers.dicom.read_dicom_series`. Axes are only
permuted and flipped (never resampled), so an oblique scan gets its closest canonical layout.

Intensity: ``window=[center, width]`` maps ``center - width/2 .. center + width/2`` onto
[0, 1]; without a window each channel uses its own 0.5-99.5 percentile range over the
whole volume (also when one slice is returned, so slices of one scan share a scale).
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from medmodal.data.readers.blob import Blob, Source, source_of
from medmodal.data.readers.budget import check_decode
from medmodal.data.readers.table import image_reader
from medmodal.data.readers.window import check_window
from medmodal.errors import ConfigError, DataError

PERCENTILES = (0.5, 99.5)
MAX_UNZIPPED = 1 << 30  # an upload may not inflate beyond 1 GiB (gzip bomb)
# Peak bytes per voxel beyond the stored ones: float32 data, its canonical copy and the scaling
# temporaries (percentiles sort a copy; the window builds a few float arrays).
BYTES_PER_VOXEL = 28
SliceIndex = int | str | None


def _is_nifti(head: bytes) -> bool:
    """NIfTI-1 (348-byte header, magic at 344) or NIfTI-2 (540 bytes, magic at 4), any endian."""
    size = head[:4]
    if size in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c"):
        return head[344:347] in (b"n+1", b"ni1")
    if size in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c"):
        return head[4:7] in (b"n+2", b"ni2")
    return False


@image_reader(
    "nifti",
    suffixes=(".nii", ".nii.gz"),
    sniff=_is_nifti,
    options=("window", "slice_index", "spatial_dims"),
)
def read_nifti(
    path: str | Path | Blob,
    window: Sequence[float] | None = None,
    slice_index: SliceIndex = None,
    spatial_dims: int = 3,
) -> np.ndarray:
    """Read a NIfTI file as float32 in [0, 1]: (C, D, H, W), or (C, H, W) for 2D.

    3D files give C = 1; the 4th dimension of 4D files (time, echoes, sequences) becomes
    channels. ``spatial_dims=2`` returns the axial slice ``slice_index`` (an int along D,
    or ``"middle"``, the default).
    """
    path = source_of(path)
    if spatial_dims not in (2, 3):
        raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    win = check_window(window)
    vol = _load_canonical(path)  # (C, D, H, W)
    out = _scale(vol, win)
    if spatial_dims == 3:
        return out
    return np.ascontiguousarray(out[:, _slice(slice_index, out.shape[1], path)])


def _is_nifti2(head: bytes) -> bool:
    return head[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c")


def check_size(header: nib.Nifti1Header, path: Source) -> int:
    """The decode limits (:mod:`.budget`) from the header; returns the bytes the file needs
    (header, extensions and stored voxels), so an upload is inflated no further."""
    shape = tuple(int(n) for n in header.get_data_shape())
    if any(n < 0 for n in shape):
        raise DataError(f"NIfTI header declares a negative size {shape}", path=path)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 0
    stored = count * header.get_data_dtype().itemsize
    what = " x ".join(map(str, shape)) + " NIfTI volume"
    check_decode("voxels", count, stored + count * BYTES_PER_VOXEL, path, what)
    return int(header.get_data_offset()) + stored


def _from_bytes(blob: Blob) -> nib.Nifti1Image | nib.Nifti2Image:
    """A NIfTI image from an upload in memory: its header checked against the decode limits
    first, then (gzip) inflated no further than the header says the file needs."""
    head = blob.head(540)
    two = _is_nifti2(head)
    header_type = nib.Nifti2Header if two else nib.Nifti1Header
    need = check_size(header_type.from_fileobj(io.BytesIO(head), check=False), blob)
    data = blob.data
    if data[:2] == b"\x1f\x8b":
        with gzip.open(blob.open(), "rb") as gz:
            data = gz.read(min(need, MAX_UNZIPPED + 1))
        if len(data) > MAX_UNZIPPED:
            raise DataError(f"NIfTI inflates beyond {MAX_UNZIPPED >> 20} MiB", path=blob)
    return (nib.Nifti2Image if two else nib.Nifti1Image).from_bytes(data)


def _load_canonical(path: Source) -> np.ndarray:
    """Load, reorient to RAS+, return float32 (C, D, H, W) in the documented axis order."""
    if isinstance(path, Path) and not path.exists():
        raise DataError("file not found", path=path)
    try:
        img = _from_bytes(path) if isinstance(path, Blob) else nib.load(path)
        if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
            raise DataError(f"not a NIfTI image (nibabel read {type(img).__name__})", path=path)
        if not isinstance(path, Blob):
            check_size(img.header, path)
        img = nib.as_closest_canonical(img)
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except DataError:
        raise
    except Exception as exc:  # nibabel/gzip/zlib raise many types for bad files
        raise DataError(_reason(exc), path=path) from None
    if data.size == 0:
        raise DataError(f"NIfTI image is empty (shape {data.shape})", path=path)
    if not np.isfinite(data).all():
        raise DataError("NIfTI image holds NaN or infinite values", path=path)
    return _to_cdhw(data, path)


def _to_cdhw(data: np.ndarray, path: Source) -> np.ndarray:
    """RAS+ (X, Y[, Z[, C...]]) -> (C, Z, -Y, -X)."""
    if data.ndim < 2:
        raise DataError(f"NIfTI image has {data.ndim} dimension(s); need 2 to 4", path=path)
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim > 4:  # e.g. (X, Y, Z, 1, 3) vector images: fold the rest into channels
        data = data.reshape(*data.shape[:3], -1)
    if data.ndim == 3:
        data = data[..., None]
    data = data[::-1, ::-1]  # x: right->left, y: anterior->posterior
    return np.ascontiguousarray(data.transpose(3, 2, 1, 0))


def _scale(vol: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """(C, D, H, W) -> [0, 1] by the window, else per-channel percentile range."""
    if window is not None:
        center, width = window
        lo = np.full(vol.shape[0], center - width / 2.0)
        hi = lo + width
    else:
        lo, hi = np.percentile(vol.reshape(vol.shape[0], -1), PERCENTILES, axis=1)
    lo = np.asarray(lo, dtype=np.float32).reshape(-1, 1, 1, 1)
    span = np.asarray(hi, dtype=np.float32).reshape(-1, 1, 1, 1) - lo
    out = np.where(span > 0, (vol - lo) / np.where(span > 0, span, 1.0), 0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _slice(slice_index: SliceIndex, depth: int, path: Source) -> int:
    if slice_index is None or slice_index == "middle":
        return depth // 2
    if isinstance(slice_index, bool) or not isinstance(slice_index, int | np.integer):
        raise ConfigError(f"slice_index must be an int or 'middle', got {slice_index!r}")
    if not 0 <= int(slice_index) < depth:
        raise DataError(f"slice_index {slice_index} out of range ({depth} slices)", path=path)
    return int(slice_index)


def _reason(exc: Exception) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text if len(text) <= 300 else text[:297] + "..."
    if isinstance(exc, EOFError) or ("Expected" in text and "bytes" in text):
        return f"truncated NIfTI file: {text}"
    if isinstance(exc, nib.filebasedimages.ImageFileError):
        return f"not a readable NIfTI file: {text}"
    return f"cannot read NIfTI file (corrupt?): {text}"
