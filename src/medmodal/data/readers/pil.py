"""PNG / JPEG / TIFF / BMP through Pillow."""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medmodal.data.readers.blob import Blob, Source
from medmodal.data.readers.budget import DecodeLimitError, check_decode
from medmodal.data.readers.table import image_reader
from medmodal.errors import DataError

MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM")
GREY = ("L", "1", "LA", "La", "I;16", "I;16B", "I;16L", "I", "F")


def check_size(img: Image.Image, path: Source) -> None:
    """The decode limits (:mod:`.budget`) from the header, before any pixel is decoded. The
    estimated peak: Pillow's buffer and a converted copy, then the float32 array and a copy."""
    w, h = img.size
    band_bytes = 4 if img.mode in ("I", "F") else 2 if img.mode.startswith("I;16") else 1
    channels = 1 if img.mode in GREY else 3
    pil = w * h * len(img.getbands()) * band_bytes
    nbytes = 2 * pil + 2 * w * h * channels * 4
    check_decode("pixels", w * h, nbytes, path, f"{w} x {h} image")


@image_reader(
    "pil",
    suffixes=(".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"),
    sniff=lambda head: head.startswith(MAGIC),
)
def read_pil(path: Source) -> np.ndarray:
    """Decode fully (so a truncated file fails here), apply EXIF orientation, scale to [0, 1].

    Returns (C, H, W) float32: 1 channel for grayscale, 3 for colour (alpha dropped).
    16-bit images are scaled by 65535, 8-bit by 255.
    """
    try:
        with warnings.catch_warnings():  # the size is checked from the header just below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path.open() if isinstance(path, Blob) else path)
        with img:
            check_size(img, path)
            img.load()
            img = ImageOps.exif_transpose(img)
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float32) / (
                    65535.0 if mode.startswith("I;16") else max(float(np.asarray(img).max()), 1.0)
                )
                arr = arr[None]
            elif mode == "F":
                arr = np.asarray(img, dtype=np.float32)[None]
            elif mode in ("L", "1", "LA", "La"):  # grayscale (alpha dropped)
                arr = np.asarray(img.convert("L"), dtype=np.float32)[None] / 255.0
            else:
                arr = np.asarray(img.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    except Image.DecompressionBombError as exc:
        raise DecodeLimitError(f"image too large to decode: {exc}", path=path) from None
    except UnidentifiedImageError:
        raise DataError(
            "cannot decode image: Pillow cannot identify it (corrupt?)", path=path
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(f"cannot decode image (corrupt or truncated?): {exc}", path=path) from None
    if not np.isfinite(arr).all():
        raise DataError("image holds NaN or infinite values", path=path)
    return np.ascontiguousarray(arr, dtype=np.float32)
