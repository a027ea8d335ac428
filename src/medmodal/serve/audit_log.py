"""An append-only audit log of JSON lines, each holding the SHA-256 of the line before it.

A line: ``seq``, ``time``, ``token`` (the token's name), ``model``, ``inputs`` (part name ->
SHA-256 of the bytes as processed: a DICOM after de-identification), ``output`` (classes,
probabilities, prediction), ``prev`` and ``hash`` (SHA-256 of the line without ``hash``). No patient
content is written. :func:`verify` recomputes the chain: an edited, inserted or deleted line breaks
it. Removing lines at the end is only caught against a head hash kept elsewhere (``expect_head``).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


def line_hash(entry: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``entry`` without its ``hash`` field."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


class AuditLog:
    """Appends hash-chained lines to ``path`` (opened in append mode; thread-safe)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.seq, self.head = _tail(self.path)
        self._fh = open(self.path, "a", encoding="ascii")  # noqa: SIM115 (kept open)

    def append(self, **fields: Any) -> str:
        """Write one line; returns its hash (the new head)."""
        with self._lock:
            entry = {
                "seq": self.seq + 1,
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                **fields,
                "prev": self.head,
            }
            entry["hash"] = line_hash(entry)
            self._fh.write(json.dumps(entry, sort_keys=True, ensure_ascii=True) + "\n")
            self._fh.flush()
            self.seq, self.head = entry["seq"], entry["hash"]
            return self.head

    def close(self) -> None:
        with self._lock:
            self._fh.close()


def _tail(path: Path) -> tuple[int, str]:
    """(seq, hash) of the last line of an existing log, else (0, GENESIS)."""
    if not path.is_file() or path.stat().st_size == 0:
        return 0, GENESIS
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - 65536))
        last = fh.read().splitlines()[-1]
    entry = json.loads(last)
    return int(entry["seq"]), str(entry["hash"])


@dataclass
class Verdict:
    """What :func:`verify` found: ``ok``, lines checked, the head hash, the first problem."""

    ok: bool
    lines: int
    head: str
    problems: list[str] = field(default_factory=list)


def verify(path: str | Path, expect_head: str | None = None) -> Verdict:
    """Walk the chain; report the first broken line (edited, inserted, deleted, reordered)."""
    prev, seq, n = GENESIS, 0, 0
    with open(path, encoding="ascii", errors="replace") as fh:
        for n, raw in enumerate(fh, start=1):
            problem = _check_line(raw, n, prev, seq)
            if problem:
                return Verdict(False, n, prev, [problem])
            entry = json.loads(raw)
            prev, seq = entry["hash"], entry["seq"]
    if expect_head is not None and expect_head != prev:
        return Verdict(False, n, prev, [f"head is {prev}, expected {expect_head} (lines cut?)"])
    return Verdict(True, n, prev)


def _check_line(raw: str, n: int, prev: str, seq: int) -> str | None:
    try:
        entry = json.loads(raw)
    except json.JSONDecodeError:
        return f"line {n}: not JSON"
    if not isinstance(entry, dict) or "hash" not in entry:
        return f"line {n}: not an audit entry"
    if entry.get("prev") != prev:
        return f"line {n}: does not follow line {n - 1} (a line was deleted, inserted or moved)"
    if entry.get("seq") != seq + 1:
        return f"line {n}: sequence {entry.get('seq')} after {seq}"
    if line_hash(entry) != entry["hash"]:
        return f"line {n}: content does not match its hash (edited)"
    return None
