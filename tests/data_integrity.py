"""The real data folder must leave a test run exactly as it came: a digest of every file in it,
taken before the first test and again after the last (see ``conftest.data_unchanged``).

CI runs as root, so read-only bits do not stop a test (or code under test) that writes into
``MEDMODAL_DATA_DIR``, for instance through a symlink in a mirrored folder."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CHUNK = 1 << 20


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``root`` (links followed; a link itself is
    recorded by its target's content)."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    with ThreadPoolExecutor(max_workers=4) as pool:  # hashlib releases the GIL on large blocks
        digests = list(pool.map(sha256, files))
    return {str(p.relative_to(root)): d for p, d in zip(files, digests, strict=True)}


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Readable lines for every file changed, removed or added between two snapshots."""
    out = [f"changed: {k}" for k in sorted(before) if k in after and after[k] != before[k]]
    out += [f"removed: {k}" for k in sorted(set(before) - set(after))]
    out += [f"added: {k}" for k in sorted(set(after) - set(before))]
    return out
