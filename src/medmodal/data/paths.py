"""Where a manifest's file references point: inside the data root, never outside it."""

from __future__ import annotations

import os
from pathlib import Path

from medmodal.errors import DataError

MEMBER = "#"  # "file.npz#key/index", "record#start:stop": a part of a file


def resolve_path(value: str, root: Path | None) -> Path:
    """A manifest path: absolute as is; relative to the manifest's ``root`` otherwise, and then it
    must stay inside ``root`` (``../../etc/passwd`` is refused with a DataError naming it)."""
    p = Path(str(value)).expanduser()
    if p.is_absolute() or root is None:
        return p
    full = Path(os.path.normpath(root / p))
    base = Path(os.path.normpath(root))
    if full != base and base not in full.parents:
        raise DataError(
            f"path {value!r} leaves the data root {root}; give a path inside it or an absolute path",
            path=value,
        )
    return root / p


def resolve_ref(value: str, root: Path | None) -> str:
    """A reference that may name a part of a file (``file.npz#member``): the file part resolved."""
    head, sep, tail = str(value).partition(MEMBER)
    return f"{resolve_path(head, root)}{sep}{tail}" if sep else str(resolve_path(head, root))
