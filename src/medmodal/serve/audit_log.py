"""An append-only audit log of JSON lines, each holding the SHA-256 of the line before it.

A line: ``seq``, ``time``, ``token`` (the token's name), ``model``, ``inputs`` (part name ->
SHA-256 of the bytes as processed: a DICOM after de-identification), ``output`` (classes,
probabilities, prediction), ``prev`` and ``hash`` (SHA-256 of the line without ``hash``). No patient
content is written. The log is created readable by its owner only (0600).

:func:`verify` recomputes the chain: an edited, inserted or deleted line breaks it. Lines cut from
the end (or cut and re-chained) leave an intact chain, so the head of the chain is also kept
outside the log: in ``<log>.head`` (``seq hash``, overwritten in place after every line) and on
``/metrics``; ``verify`` compares the log's head with the head file by default (``expect_head``:
a head kept elsewhere). The server refuses to start on a log whose chain or head does not verify
(a :class:`~medmodal.errors.ConfigError` naming the file and the line), never with a traceback;
a head file one line behind its log (a stop between the two writes) is brought up to date.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medmodal.errors import ConfigError

GENESIS = "0" * 64


def line_hash(entry: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``entry`` without its ``hash`` field."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def head_path(path: str | Path) -> Path:
    """The head file beside a log: ``<log>.head``."""
    p = Path(path)
    return p.with_name(p.name + ".head")


def read_head(path: str | Path) -> tuple[int, str] | None:
    """(seq, hash) of a log's head file; None when there is none or it is unreadable."""
    try:
        seq, digest = head_path(path).read_text(encoding="ascii").split()
        return int(seq), digest
    except (OSError, ValueError, UnicodeDecodeError):
        return None


class AuditLog:
    """Appends hash-chained lines to ``path`` (0600, append mode; thread-safe)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.seq, self.head = _checked_tail(self.path)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)  # an existing log too: owner only
        except OSError:
            pass
        self._fh = os.fdopen(fd, "a", encoding="ascii")
        head = os.open(head_path(self.path), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.fchmod(head, 0o600)
        except OSError:
            pass
        self._head_fd = head
        self._write_head()

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
            self._write_head()
            return self.head

    def _write_head(self) -> None:
        """One fixed-width write at offset 0 of the open head file (no rename per line)."""
        line = f"{self.seq:>20} {self.head}\n".encode("ascii")
        os.pwrite(self._head_fd, line, 0)
        os.ftruncate(self._head_fd, len(line))

    def close(self) -> None:
        with self._lock:
            self._fh.close()
            os.close(self._head_fd)


def _checked_tail(path: Path) -> tuple[int, str]:
    """(seq, hash) of the last line of a log that verifies, else a ConfigError naming it."""
    if not path.exists() or path.stat().st_size == 0:
        return 0, GENESIS
    verdict = verify(path, use_head_file=False)
    recorded = read_head(path)
    behind = recorded is not None and recorded[0] == verdict.lines - 1
    if verdict.ok and recorded is not None and recorded[1] != verdict.head and not behind:
        verdict = verify(path)  # the head file disagrees: say how
    if not verdict.ok:
        raise ConfigError(
            f"audit log {path}: {verdict.problems[0]}. The server does not start on a damaged "
            f"log: inspect it (`medmodal audit-log verify {path}`), then restore it, or move it "
            "and its .head file aside to start a new chain"
        )
    return verdict.lines, verdict.head


@dataclass
class Verdict:
    """What :func:`verify` found: ``ok``, lines checked, the head hash, the first problem."""

    ok: bool
    lines: int
    head: str
    problems: list[str] = field(default_factory=list)


def verify(path: str | Path, expect_head: str | None = None, use_head_file: bool = True) -> Verdict:
    """Walk the chain; report the first broken line (edited, inserted, deleted, reordered, a
    damaged or blank line) and, against ``expect_head`` or else the head file, lines cut from
    the end."""
    prev, seq, n = GENESIS, 0, 0
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            problem, entry = _check_line(raw, n, prev, seq)
            if problem:
                return Verdict(False, n - 1, prev, [problem])
            prev, seq = entry["hash"], entry["seq"]
    if expect_head is not None and expect_head != prev:
        return Verdict(False, n, prev, [f"head is {prev}, expected {expect_head} (lines cut?)"])
    recorded = read_head(path) if use_head_file and expect_head is None else None
    if recorded is not None and recorded != (seq, prev):
        return Verdict(
            False,
            n,
            prev,
            [
                f"the log ends at line {seq} ({prev[:12]}...) but its head file "
                f"{head_path(path).name} says line {recorded[0]} ({recorded[1][:12]}...): "
                "lines were cut, or cut and re-chained"
            ],
        )
    return Verdict(True, n, prev)


def _check_line(raw: bytes, n: int, prev: str, seq: int) -> tuple[str | None, dict[str, Any]]:
    if not raw.endswith(b"\n"):
        return f"line {n}: incomplete (no line end: a write was cut short)", {}
    try:
        entry = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        what = "blank" if not raw.strip() else "not JSON"
        return f"line {n}: {what}", {}
    if not isinstance(entry, dict) or "hash" not in entry:
        return f"line {n}: not an audit entry", {}
    if entry.get("prev") != prev:
        return f"line {n}: does not follow line {n - 1} (a line was deleted, inserted or moved)", {}
    if entry.get("seq") != seq + 1:
        return f"line {n}: sequence {entry.get('seq')} after {seq}", {}
    if line_hash(entry) != entry["hash"]:
        return f"line {n}: content does not match its hash (edited)", {}
    return None, entry
