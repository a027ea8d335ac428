"""Uploads held in memory: a :class:`Blob` is a file's bytes and the name it came with.

Every reader that takes a path also takes a Blob (the service's uploads are never written to
disk). Readers open it with :meth:`Blob.open` and name it in their messages by its part name.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Blob:
    """A file held in memory: ``data`` and a ``name`` (the upload's part, for messages).

    What the client said of it, for formats that do not carry it: ``files`` (the other files
    of a record by file name, e.g. the signal files a WFDB header names), ``leads`` (lead
    names of a ``.npy`` signal, in its channel order) and ``fs`` (its sampling rate)."""

    data: bytes
    name: str = "upload"
    files: Mapping[str, bytes] | None = field(default=None, compare=False, repr=False)
    leads: tuple[str, ...] | None = None
    fs: float | None = None

    def open(self) -> io.BytesIO:
        return io.BytesIO(self.data)

    def head(self, n: int) -> bytes:
        """The first ``n`` bytes (gzip-compressed data: the first decompressed bytes)."""
        head = self.data[:n]
        if head[:2] == b"\x1f\x8b":
            try:
                with gzip.open(self.open(), "rb") as gz:
                    return gz.read(n)
            except (OSError, EOFError, zlib.error):
                return b""
        return head

    def __str__(self) -> str:
        return f"upload {self.name!r}"

    def __len__(self) -> int:
        return len(self.data)


Source = Path | Blob


def source_of(value: str | Path | Blob) -> Source:
    """A Blob stays a Blob; anything else is a Path."""
    return value if isinstance(value, Blob) else Path(value)
