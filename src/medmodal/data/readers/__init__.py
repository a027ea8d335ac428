"""File readers, one module per format. Image readers are registered in one registry
(:data:`IMAGE_READERS`, :mod:`.table`), signal formats in another (:data:`SIGNAL_FORMATS`,
:mod:`.signal`); each entry declares its suffixes, content sniffer and priority.

Every reader raises :class:`~medmodal.errors.DataError` naming the file for a
missing, unreadable, truncated or corrupt input, never a bare library error.

Image readers return ``float32`` arrays, channel first: (C, H, W) for 2D,
(C, D, H, W) for 3D, intensities scaled to [0, 1] (8/16-bit images by their
bit depth, DICOM through its rescale + VOI window, NIfTI by a percentile
window unless a window is given).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# Importing registers; the sniffing order is each reader's declared priority, not this order.
from medmodal.data.readers import dicom, nifti, npz, pil  # noqa: F401  (register readers)
from medmodal.data.readers.audio import read_audio
from medmodal.data.readers.blob import Blob
from medmodal.data.readers.signal import SIGNAL_FORMATS, load_record, read_signal
from medmodal.data.readers.table import IMAGE_READERS, find_reader, image_reader, image_suffixes
from medmodal.data.readers.text import read_text
from medmodal.errors import DataError

NPZ_MEMBER = "#"  # "file.npz#train_images/12": one image of an array in an .npz

__all__ = [
    "IMAGE_READERS",
    "SIGNAL_FORMATS",
    "Blob",
    "find_reader",
    "image_reader",
    "image_suffixes",
    "load_record",
    "read_audio",
    "read_image",
    "read_signal",
    "read_text",
]


def read_image(
    ref: str | Path | Blob,
    *,
    window: Any = None,
    slice_index: int | str | None = None,
    frames: int | str | None = None,
    spatial_dims: int | None = None,
) -> np.ndarray:
    """Read one image (2D or 3D) from a file, a DICOM series folder, an ``.npz`` member or an
    upload held in memory (:class:`Blob`, read by content)."""
    given = {"window": window, "slice_index": slice_index, "frames": frames}
    given["spatial_dims"] = spatial_dims
    if isinstance(ref, Blob):
        reader = find_reader(ref)
        return reader.read(ref, **{k: given[k] for k in reader.options if given[k] is not None})
    ref = str(ref)
    if NPZ_MEMBER in ref and ref.split(NPZ_MEMBER, 1)[0].lower().endswith(".npz"):
        return npz.read_npz_member(ref)
    path = Path(ref)
    if not path.exists():
        raise DataError("file not found", path=path)
    if path.is_dir():
        return dicom.read_dicom_series(
            path, window=window, frames=frames if frames is not None else slice_index
        )
    reader = find_reader(path)
    return reader.read(path, **{k: given[k] for k in reader.options if given[k] is not None})
