"""MedMNIST-style ``.npz`` archives: ``file.npz#train_images/12`` names one image."""

from __future__ import annotations

import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from medmodal.data.readers.blob import Blob, Source
from medmodal.data.readers.budget import check_decode, load_npy
from medmodal.data.readers.table import image_reader
from medmodal.errors import DataError


@lru_cache(maxsize=8)
def load_npz(path: str) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` once per process (readers share it)."""
    p = Path(path)
    if not p.is_file():
        raise DataError("file not found", path=p)
    try:
        with open(p, "rb") as fh:  # our handle: closed even when numpy fails part-way
            data = np.load(fh, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):  # a plain .npy saved as .npz
                raise DataError("not an .npz archive (a single .npy array?)", path=p)
            with data:
                return {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(
            f"cannot read .npz archive (corrupt or truncated?): {exc}", path=p
        ) from None


def to_channel_first(img: np.ndarray, path: str) -> np.ndarray:
    """uint8 (H,W), (H,W,C), (D,H,W) -> float32 (C,...) in [0, 1]."""
    if img.dtype == np.uint8:
        arr = img.astype(np.float32) / 255.0
    elif img.dtype == np.uint16:
        arr = img.astype(np.float32) / 65535.0
    else:
        arr = img.astype(np.float32)
    if not np.isfinite(arr).all():
        raise DataError("array holds NaN or infinite values", path=path)
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.shape[0] > 4:
        return np.ascontiguousarray(arr[..., :3].transpose(2, 0, 1))
    if arr.ndim == 3:  # (D, H, W) volume
        return arr[None]
    if arr.ndim == 4:  # (C, D, H, W) or (D, H, W, C)
        return arr if arr.shape[0] <= 4 else np.ascontiguousarray(np.moveaxis(arr, -1, 0))
    raise DataError(f"unexpected image array shape {img.shape}", path=path)


def read_npz_member(ref: str) -> np.ndarray:
    """Read ``archive.npz#key/index`` as a channel-first float32 image."""
    path, _, member = ref.partition("#")
    key, _, idx = member.rpartition("/")
    if not key or not idx.isdigit():
        raise DataError(f"bad .npz reference {ref!r}; expected file.npz#key/index", path=path)
    arrays = load_npz(path)
    if key not in arrays:
        raise DataError(f"no array {key!r} in archive (has {sorted(arrays)})", path=path)
    arr = arrays[key]
    i = int(idx)
    if i >= len(arr):
        raise DataError(f"index {i} out of range for {key!r} ({len(arr)} items)", path=path)
    return to_channel_first(arr[i], ref)


@image_reader("npy", suffixes=(".npy",), sniff=lambda head: head.startswith(b"\x93NUMPY"))
def read_npy_image(path: Source) -> np.ndarray:
    """A numeric ``.npy`` array as an image: (H, W), (H, W, C), (D, H, W), (C, D, H, W) or
    (D, H, W, C); uint8 / uint16 scaled by their range. Its header is checked against the
    decode limits first."""
    try:
        with path.open() if isinstance(path, Blob) else open(path, "rb") as fh:
            arr = load_npy(fh, lambda shape, dtype: _check_size(shape, dtype, path))
    except DataError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"cannot read .npy (corrupt or truncated?): {exc}", path=path) from None
    return to_channel_first(arr, str(path))


def _check_size(shape: tuple[int, ...], dtype: np.dtype, path: Source) -> None:
    if dtype.kind not in "biuf":
        raise DataError(f"an image .npy holds numbers, not {dtype} values", path=path)
    if not 2 <= len(shape) <= 4:
        raise DataError(f"unexpected image array shape {shape}", path=path)
    count = int(np.prod(shape, dtype=object))
    planar = len(shape) == 2 or (len(shape) == 3 and shape[-1] in (3, 4))
    kind = "pixels" if planar else "voxels"
    what = " x ".join(map(str, shape)) + " array"
    check_decode(kind, count, count * (dtype.itemsize + 12), path, what)
