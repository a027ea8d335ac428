"""The registry of image readers: each declares its suffixes, a content sniffer and its options.

``read_image`` and folder prediction both use it. A file is read by the first reader, in
:meth:`~medmodal.registry.Registry.ordered` order (priority, then registration), whose sniffer
recognises its first bytes (a PNG named ``.dcm`` is read as PNG); when no sniffer does, by its
suffix (the reader then says what is wrong with the file). An upload is read by content only.

A new format is one module that decorates its read function with :func:`image_reader` and is
imported by ``readers/__init__``; import order decides nothing (priority does).
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medmodal.data.readers.blob import Blob, Source
from medmodal.errors import DataError
from medmodal.registry import Registry

HEAD_BYTES = 544  # enough for every sniffer below (NIfTI-2 has a 540-byte header)
Sniffer = Callable[[bytes], bool]
OPTIONS = ("window", "slice_index", "frames", "spatial_dims")


@dataclass(frozen=True)
class ImageFormat:
    """What an image reader declares where it is registered (its registry capabilities)."""

    suffixes: tuple[str, ...]  # lower case, with the dot
    sniff: Sniffer  # recognises the file's first HEAD_BYTES (decompressed when gzip)
    options: tuple[str, ...] = ()  # the read_image options it takes (a subset of OPTIONS)


@dataclass(frozen=True)
class ImageReader:
    """``read(path_or_blob, **options)`` -> float32 channel-first array in [0, 1]."""

    name: str
    suffixes: tuple[str, ...]
    sniff: Sniffer
    read: Callable[..., np.ndarray]
    options: tuple[str, ...]


IMAGE_READERS: Registry[np.ndarray] = Registry("image reader")


def image_reader(
    name: str,
    suffixes: tuple[str, ...],
    sniff: Sniffer,
    options: tuple[str, ...] = (),
    priority: int = 0,
) -> Callable[[Callable[..., np.ndarray]], Callable[..., np.ndarray]]:
    """Register ``fn(path, **options)`` for files with these suffixes or this content.
    ``priority``: a higher one sniffs first (only formats whose magic can occur inside another
    format's header need one)."""
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise ValueError(f"reader {name!r}: unknown options {sorted(unknown)}; known: {OPTIONS}")
    fmt = ImageFormat(tuple(s.lower() for s in suffixes), sniff, tuple(options))
    return IMAGE_READERS.register(name, priority=priority, capabilities=fmt)


def reader(name: str) -> ImageReader:
    """The registered reader ``name`` with what it declared."""
    fmt: ImageFormat = IMAGE_READERS.capabilities(name)
    return ImageReader(name, fmt.suffixes, fmt.sniff, IMAGE_READERS.get(name), fmt.options)


def image_suffixes() -> list[str]:
    """Every suffix some image reader claims (lower case, with the dot)."""
    return sorted({s for n in IMAGE_READERS.names() for s in reader(n).suffixes})


def suffix_of(path: str | Path | Blob) -> str:
    name = (path.name if isinstance(path, Blob) else str(path)).lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def head_of(path: Source) -> bytes:
    """The file's first bytes (gzip-compressed files: the first decompressed bytes)."""
    if isinstance(path, Blob):
        return path.head(HEAD_BYTES)
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEAD_BYTES)
        if head[:2] == b"\x1f\x8b":
            with gzip.open(path, "rb") as gz:
                head = gz.read(HEAD_BYTES)
    except (OSError, EOFError, zlib.error):
        return b""
    return head


def find_reader(path: Source) -> ImageReader:
    """The reader for ``path``: by content first, then by suffix; DataError if none fits.

    An upload (:class:`Blob`) is read by content only: its name is the client's word."""
    head = head_of(path)
    readers = [reader(n) for n in IMAGE_READERS.ordered()]
    for r in readers:
        if head and r.sniff(head):
            return r
    if isinstance(path, Blob):
        raise DataError(
            "not a PNG, JPEG, TIFF, BMP, DICOM or NIfTI image by its content "
            f"(first bytes {head[:8]!r}); the file name does not decide the format",
            path=path,
        )
    suffix = suffix_of(path)
    for r in readers:
        if suffix in r.suffixes:
            return r
    raise DataError(
        f"unsupported image format {suffix or '(no suffix)'} and content; expected "
        f"{', '.join(image_suffixes())}, a DICOM series folder or file.npz#key/index",
        path=path,
    )
