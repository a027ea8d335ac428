"""Clinical text cells: inline text, or a path to a UTF-8 (or Latin-1) ``.txt`` file.

:func:`read_text` returns the raw note (no normalisation) or ``None`` for an
empty cell; a missing, unreadable or binary file raises
:class:`~medmodal.errors.DataError` naming the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

from medmodal.data.paths import resolve_path
from medmodal.data.readers.blob import Blob
from medmodal.errors import ConfigError, DataError

TextSource = Literal["auto", "inline", "file"]
TEXT_SUFFIX = ".txt"
_MAX_PATH_CHARS = 4096


class TextEncodingWarning(UserWarning):
    """A text file was not valid UTF-8 and was decoded as Latin-1."""


def read_text(value: Any, root: Path | None, source: TextSource | str = "auto") -> str | None:
    """The note in a manifest cell.

    ``source``:

    * ``"inline"``: the cell is the note.
    * ``"file"``: the cell is a path (relative to ``root`` unless absolute) to a text file.
    * ``"auto"`` (default): a path when the cell ends with ``.txt`` and either exists or
      looks like a path (one line, no spaces, or a ``/`` or ``\\`` in it, so a missing
      file is reported rather than read as the note "notes/p1.txt"); inline text otherwise.
    """
    if source not in ("auto", "inline", "file"):
        raise ConfigError(f"text source must be auto, inline or file, not {source!r}")
    if isinstance(value, Blob):  # an upload in memory: its bytes are the note
        return decode_text(value.data, value) if value.data.strip() else None
    if _is_empty(value):
        return None
    text = str(value)
    if source == "inline" or (source == "auto" and not _looks_like_file(text, root)):
        return text
    return read_text_file(_resolve(text.strip(), root))


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    try:
        import pandas as pd

        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _resolve(ref: str, root: Path | None) -> Path:
    return resolve_path(ref, root)


def _looks_like_file(text: str, root: Path | None) -> bool:
    ref = text.strip()
    if not ref.lower().endswith(TEXT_SUFFIX) or "\n" in ref or len(ref) > _MAX_PATH_CHARS:
        return False
    if _resolve(ref, root).is_file():
        return True
    return " " not in ref or "/" in ref or "\\" in ref


def read_text_file(path: Path) -> str:
    """Decode a text file: UTF-8 (a BOM is dropped), else Latin-1 with a warning."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError("text file not found", path=path) from None
    except IsADirectoryError:
        raise DataError("expected a text file, found a directory", path=path) from None
    except OSError as exc:
        raise DataError(f"cannot read text file: {exc.strerror or exc}", path=path) from None
    return decode_text(data, path)


def decode_text(data: bytes, path: Path | Blob) -> str:
    """UTF-8 (a BOM is dropped), else Latin-1 with a warning; binary content is a DataError."""
    if _is_binary(data):
        raise DataError("cannot decode text file: binary content, not text", path=path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    text = data.decode("latin-1")
    warnings.warn(
        f"{path}: not valid UTF-8; decoded as Latin-1 (ISO-8859-1), check accented characters",
        TextEncodingWarning,
        stacklevel=2,
    )
    return text


def _is_binary(data: bytes) -> bool:
    """NUL bytes, or more than 10% control bytes other than tab / line breaks / form feed."""
    if b"\x00" in data:
        return True
    controls = sum(1 for b in data[:65536] if b < 0x20 and b not in (0x09, 0x0A, 0x0B, 0x0C, 0x0D))
    return controls > 0.1 * min(len(data), 65536)
