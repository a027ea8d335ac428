"""Read every cell of a file-backed or text modality into fingerprints (or an unreadable entry).

For each cell: the digest of the file's bytes (``file_key``), the digest of the decoded
content (``content_key``: pixels, samples, normalised note) and, for images, a pHash.
A cell that cannot be read becomes an :class:`Unreadable` entry; the audit goes on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medmodal.audit.hashing import array_digest, normalize_note, phash
from medmodal.data.paths import resolve_path
from medmodal.data.preprocess.base import is_missing
from medmodal.data.schema import ModalitySpec
from medmodal.errors import DataError
from medmodal.utils.io import file_digest

AUDITED_TYPES = ("image", "audio", "signal", "text")


@dataclass
class Entry:
    """Fingerprints of one readable cell (row ``row`` of one modality)."""

    row: int
    file: str | None  # the file read; None for an inline note
    file_key: str | None  # sha256 of the file bytes (+ "#member" / "#start:stop"); None inline
    content_key: str  # digest of the decoded content
    phash: np.ndarray | None = None


@dataclass
class Unreadable:
    modality: str
    sample_id: str
    file: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "modality": self.modality,
            "sample_id": self.sample_id,
            "file": self.file,
            "reason": self.reason,
        }


@dataclass
class Collected:
    """Everything read for one modality."""

    entries: list[Entry] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)
    absent: int = 0

    def counts(self) -> dict[str, int]:
        """Cells read, absent and unreadable, and how many of those read were files."""
        return {
            "read": len(self.entries),
            "absent": self.absent,
            "unreadable": len(self.unreadable),
            "files": sum(e.file is not None for e in self.entries),
        }


def path_digest(path: Path) -> str:
    """sha256 of a file's bytes; of a DICOM series folder: of its files' names and digests."""
    if path.is_dir():
        parts = [f"{p.name}:{file_digest(p)}" for p in sorted(path.iterdir()) if p.is_file()]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()
    return file_digest(path)


def npz_member(ref: str, root: Path | None) -> str | None:
    """``archive.npz#key/index`` with the archive resolved against ``root``; None for other refs."""
    head, sep, member = ref.partition("#")
    if sep and head.lower().endswith(".npz"):
        return f"{resolve_path(head, root)}#{member}"
    return None


def image_key(ref: str, root: Path | None) -> str:
    """The audit's byte-level key of one image reference, without decoding a file: sha256 of the
    file (:func:`path_digest`), or of an ``.npz`` member's decoded array (an archive holds many)."""
    full = npz_member(ref, root)
    if full is None:
        return path_digest(resolve_path(ref, root))
    from medmodal.data.readers import read_image

    return array_digest(read_image(full))


class _Reader:
    """Reads one modality's cells; file digests are computed once per file."""

    def __init__(self, spec: ModalitySpec, root: Path | None, near: bool) -> None:
        self.spec = spec
        self.root = root
        self.near = near
        self.options = dict(spec.preprocess)
        self._digests: dict[str, str] = {}

    def file_key(self, path: Path) -> str:
        key = str(path)
        if key not in self._digests:
            self._digests[key] = path_digest(path)
        return self._digests[key]

    def read(self, ref: str) -> Entry:
        kind = self.spec.type
        return {"image": self.image, "audio": self.audio, "signal": self.signal, "text": self.text}[
            kind
        ](ref)

    def image(self, ref: str) -> Entry:
        from medmodal.data.readers import read_image

        opts = {
            k: self.options[k] for k in ("window", "slice_index", "frames") if k in self.options
        }
        if "size" in self.options:
            opts["spatial_dims"] = len(self.options["size"])
        full = npz_member(ref, self.root)
        if full is not None:  # one array of an archive: its decoded bytes
            arr = read_image(full, **opts)
            digest = array_digest(arr)
            return Entry(-1, full, digest, digest, phash(arr) if self.near else None)
        path = resolve_path(ref, self.root)
        arr = read_image(path, **opts)
        return Entry(
            -1, str(path), self.file_key(path), array_digest(arr), phash(arr) if self.near else None
        )

    def audio(self, ref: str) -> Entry:
        from medmodal.data.readers.audio import read_audio

        path = resolve_path(ref, self.root)
        wave, sr = read_audio(path)
        return Entry(-1, str(path), self.file_key(path), f"{sr}:{array_digest(wave)}")

    def signal(self, ref: str) -> Entry:
        from medmodal.data.readers.signal import parse_ref, read_signal

        base, start, stop = parse_ref(ref)
        path = resolve_path(base, self.root)
        segment = "" if start is None and stop is None else f"#{start or ''}:{stop or ''}"
        fs = self.options.get("input_fs") or self.options.get("fs")
        x, rate, _ = read_signal(
            f"{path}{segment}", fs=fs, lead_names=self.options.get("lead_names")
        )
        return Entry(
            -1,
            f"{path}{segment}",
            self.signal_file_key(path) + segment,
            f"{rate}:{array_digest(x)}",
        )

    def signal_file_key(self, path: Path) -> str:
        """Digest of the signal bytes: the file itself, or a WFDB record's signal files."""
        if path.suffix.lower() in (".npy", ".csv"):
            return self.file_key(path)
        from medmodal.data.readers.signal import import_wfdb

        base = path.with_suffix("") if path.suffix.lower() in (".hea", ".dat") else path
        record = f"wfdb:{base}"
        if record not in self._digests:
            header = import_wfdb().rdheader(str(base))
            names = sorted(dict.fromkeys(getattr(header, "file_name", None) or []))
            parts = [self.file_key(base.parent / n) for n in names]
            parts = parts or [self.file_key(Path(f"{base}.hea"))]
            self._digests[record] = hashlib.sha256("\n".join(parts).encode()).hexdigest()
        return self._digests[record]

    def text(self, ref: str) -> Entry:
        from medmodal.data.readers.text import read_text

        source = str(self.options.get("source", "auto"))
        note = read_text(ref, self.root, source)
        if note is None or not normalize_note(note):
            raise _Absent
        file = None
        cell = ref.strip()
        if source == "file" or (source == "auto" and cell.lower().endswith(".txt")):
            path = resolve_path(cell, self.root)
            file = str(path) if path.is_file() else None
        digest = hashlib.sha256(normalize_note(note).encode()).hexdigest()
        return Entry(-1, file, None if file is None else self.file_key(Path(file)), digest)


class _Absent(Exception):
    """A cell that holds nothing to compare (an empty note)."""


def collect(
    name: str,
    spec: ModalitySpec,
    values: Iterable[Any],
    ids: list[str],
    root: Path | None,
    *,
    near: bool,
    track: Callable[[Iterable[Any], str], Iterable[Any]] | None = None,
) -> Collected:
    """Fingerprints of every cell of one modality; unreadable cells are listed, not raised."""
    reader = _Reader(spec, root, near)
    out = Collected()
    cells = list(enumerate(values))
    for row, value in track(cells, name) if track else cells:
        if is_missing(value):
            out.absent += 1
            continue
        try:
            entry = reader.read(str(value))
        except _Absent:
            out.absent += 1
            continue
        except DataError as exc:
            out.unreadable.append(
                Unreadable(name, ids[row], exc.path or str(value)[:300], exc.reason)
            )
            continue
        except Exception as exc:  # noqa: BLE001  (a decoder's own error must not stop the audit)
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            out.unreadable.append(Unreadable(name, ids[row], str(value)[:300], reason))
            continue
        entry.row = row
        out.entries.append(entry)
    return out
