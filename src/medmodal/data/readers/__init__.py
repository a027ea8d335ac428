"""File readers, one module per format; :func:`read_image` dispatches by file name.

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

from medmodal.errors import DataError

PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}
NIFTI_SUFFIXES = {".nii", ".nii.gz"}
NPZ_MEMBER = "#"  # "file.npz#train_images/12": one image of an array in an .npz


def _suffix(path: str) -> str:
    name = path.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def read_image(ref: str | Path, **options: Any) -> np.ndarray:
    """Read one image (2D or 3D) from a path or an ``.npz`` member reference."""
    ref = str(ref)
    if NPZ_MEMBER in ref and ref.split(NPZ_MEMBER, 1)[0].lower().endswith(".npz"):
        from medmodal.data.readers.npz import read_npz_member

        return read_npz_member(ref)
    suffix = _suffix(ref)
    path = Path(ref)
    if not path.exists():
        raise DataError("file not found", path=path)
    if path.is_dir():
        from medmodal.data.readers.dicom import read_dicom_series

        return read_dicom_series(path, **_dicom_options(options))
    if suffix in PIL_SUFFIXES:
        from medmodal.data.readers.pil import read_pil

        return read_pil(path)
    if suffix in DICOM_SUFFIXES:
        from medmodal.data.readers.dicom import read_dicom

        return read_dicom(path, **_dicom_options(options))
    if suffix in NIFTI_SUFFIXES:
        from medmodal.data.readers.nifti import read_nifti

        return read_nifti(path, **_pick(options, "window", "slice_index", "spatial_dims"))
    if suffix == ".npy":
        from medmodal.data.readers.npz import read_npy_image

        return read_npy_image(path)
    # No telling suffix: DICOM files are often extension-less; sniff the preamble.
    if _is_dicom(path):
        from medmodal.data.readers.dicom import read_dicom

        return read_dicom(path, **_dicom_options(options))
    raise DataError(
        f"unsupported image format {suffix or '(no suffix)'}; expected PNG/JPEG/TIFF, DICOM, NIfTI, .npy or file.npz#key/index",
        path=path,
    )


def _pick(options: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: options[k] for k in keys if options.get(k) is not None}


def _dicom_options(options: dict[str, Any]) -> dict[str, Any]:
    """window / frames for DICOM; ``slice_index`` (the 3D-as-2D option) selects a frame too."""
    picked = _pick(options, "window", "frames")
    if "frames" not in picked and options.get("slice_index") is not None:
        picked["frames"] = options["slice_index"]
    return picked


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"
