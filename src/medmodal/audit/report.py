"""Duplicate groups at three levels and the audit report.

Levels, each coarser than the one before: ``file`` (byte-identical files; for an
``.npz`` member the decoded array), ``content`` (identical decoded content: pixels,
samples, normalised note) and ``near`` (images whose pHashes are within the threshold,
single linkage). A group is reported at a level only when it joins rows that the finer
level kept apart, and its pairs are counted at that level only: every pair of rows is
counted once, at the finest level that links them.

A pair is **same patient** (harmless: several films of one person), **across patients**
(two patient ids share content: one person under two ids, or a data error) and/or
**across splits** (both rows have a split and they differ: leakage).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medmodal.audit.collect import Entry, Unreadable
from medmodal.audit.hashing import PHASH_BITS, near_pairs

KINDS = ("file", "content", "near")
CONTENT_LABEL = {
    "image": "identical pixels",
    "audio": "identical audio samples",
    "signal": "identical signals",
    "text": "identical notes",
}


def kind_label(kind: str, modality_type: str) -> str:
    if kind == "file":
        return "byte-identical files"
    return CONTENT_LABEL[modality_type] if kind == "content" else "near-identical images"


@dataclass
class Member:
    sample_id: str
    patient_id: str
    split: str | None
    file: str | None


@dataclass
class DuplicateGroup:
    """Rows of one modality that share content at one level."""

    modality: str
    modality_type: str
    kind: str
    members: list[Member]
    pairs: int
    cross_patient_pairs: int
    cross_split_pairs: int
    distance: tuple[int, int] | None = None  # near: (min, max) Hamming distance of linking pairs

    @property
    def cross_patient(self) -> bool:
        return self.cross_patient_pairs > 0

    @property
    def cross_split(self) -> bool:
        return self.cross_split_pairs > 0

    @property
    def label(self) -> str:
        return kind_label(self.kind, self.modality_type)

    def to_dict(self) -> dict[str, Any]:
        return {
            "modality": self.modality,
            "kind": self.kind,
            "label": self.label,
            "cross_patient": self.cross_patient,
            "cross_split": self.cross_split,
            "pairs": self.pairs,
            "cross_patient_pairs": self.cross_patient_pairs,
            "cross_split_pairs": self.cross_split_pairs,
            "hamming": None if self.distance is None else list(self.distance),
            "patients": sorted({m.patient_id for m in self.members}),
            "splits": sorted({m.split for m in self.members if m.split is not None}),
            "members": [vars(m).copy() for m in self.members],
        }


def _pairs(keys: Sequence[Hashable]) -> int:
    return sum(c * (c - 1) // 2 for c in Counter(keys).values())


def _cross_pairs(
    finer: list[int], patients: list[str], splits: list[str | None]
) -> tuple[int, int, int]:
    """(pairs, across-patient pairs, across-split pairs) among rows in different finer classes."""
    n = len(finer)
    total = n * (n - 1) // 2 - _pairs(finer)
    same_patient = _pairs(patients) - _pairs(list(zip(patients, finer, strict=True)))
    known = [(s, f) for s, f in zip(splits, finer, strict=True) if s is not None]
    k = len(known)
    known_pairs = k * (k - 1) // 2 - _pairs([f for _, f in known])
    same_split = _pairs([s for s, _ in known]) - _pairs(known)
    return total, total - same_patient, known_pairs - same_split


class _UnionFind:
    def __init__(self, labels: Sequence[int]) -> None:
        self.parent = list(labels)

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _merge_by(keys: Sequence[Hashable], start: list[int]) -> list[int]:
    """Classes of ``start`` joined whenever two entries share a key (labels: lowest index)."""
    uf = _UnionFind(list(range(len(keys))))
    for i, c in enumerate(start):
        uf.union(i, c)
    first: dict[Hashable, int] = {}
    for i, key in enumerate(keys):
        uf.union(i, first.setdefault(key, i))
    return [uf.find(i) for i in range(len(keys))]


def _near_classes(
    entries: list[Entry], content: list[int], threshold: int
) -> tuple[list[int], dict[int, tuple[int, int]]]:
    """Content classes joined by pHash distance; (min, max) linking distance per class."""
    reps = sorted({c for c, e in zip(content, entries, strict=True) if e.phash is not None})
    if len(reps) < 2:
        return content, {}
    hashes = np.stack([entries[r].phash for r in reps])  # type: ignore[misc]
    uf = _UnionFind(list(range(len(entries))))
    for i, c in enumerate(content):
        uf.union(i, c)
    linked = near_pairs(hashes, threshold)
    for a, b, _ in linked:
        uf.union(reps[a], reps[b])
    dist: dict[int, tuple[int, int]] = {}
    for a, _, d in linked:
        root = uf.find(reps[a])
        lo, hi = dist.get(root, (d, d))
        dist[root] = (min(lo, d), max(hi, d))
    return [uf.find(i) for i in range(len(entries))], dist


Who = Callable[[int], tuple[str, str, str | None]]


def find_groups(
    name: str, modality_type: str, entries: list[Entry], who: Who, near_threshold: int | None
) -> list[DuplicateGroup]:
    """Duplicate groups of one modality at every level (see the module docstring)."""
    rows = list(range(len(entries)))
    files = _merge_by([e.file_key or ("row", e.row) for e in entries], rows)
    levels: list[tuple[str, list[int], list[int], dict[int, tuple[int, int]]]] = [
        ("file", rows, files, {})
    ]
    content = _merge_by([e.content_key for e in entries], files)
    levels.append(("content", files, content, {}))
    if near_threshold is not None and modality_type == "image":
        near, dist = _near_classes(entries, content, near_threshold)
        levels.append(("near", content, near, dist))
    groups = []
    for kind, finer, coarse, dist in levels:
        members: dict[int, list[int]] = {}
        for i, c in enumerate(coarse):
            members.setdefault(c, []).append(i)
        for root, idx in members.items():
            if len({finer[i] for i in idx}) < 2:
                continue
            info = [who(entries[i].row) for i in idx]
            counts = _cross_pairs(
                [finer[i] for i in idx], [p for _, p, _ in info], [s for _, _, s in info]
            )
            ms = [
                Member(s, p, sp, entries[i].file) for i, (s, p, sp) in zip(idx, info, strict=True)
            ]
            groups.append(DuplicateGroup(name, modality_type, kind, ms, *counts, dist.get(root)))
    return groups


@dataclass
class AuditReport:
    """Every duplicate group, the unreadable cells and what was checked."""

    rows: int
    groups: list[DuplicateGroup] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)
    modalities: dict[str, dict[str, Any]] = field(default_factory=dict)
    near_threshold: int | None = None
    patient_column: str | None = None
    split_source: str | None = None
    seconds: float = 0.0

    @property
    def cross_patient(self) -> list[DuplicateGroup]:
        return [g for g in self.groups if g.cross_patient]

    @property
    def cross_split(self) -> list[DuplicateGroup]:
        return [g for g in self.groups if g.cross_split]

    def sort(self) -> None:
        """Groups across splits first, then across patients; by modality, level and size."""
        self.groups.sort(
            key=lambda g: (
                not g.cross_split,
                not g.cross_patient,
                g.modality,
                KINDS.index(g.kind),
                -len(g.members),
            )
        )

    def counts(self) -> list[dict[str, Any]]:
        """One row per modality and level: groups, pairs, and those across patients / splits."""
        out = []
        for name, info in self.modalities.items():
            for kind in KINDS:
                if kind == "near" and (info["type"] != "image" or self.near_threshold is None):
                    continue
                if kind == "file" and not info.get("files"):
                    continue  # inline notes: no files to compare
                gs = [g for g in self.groups if g.modality == name and g.kind == kind]
                out.append(
                    {
                        "modality": name,
                        "kind": kind,
                        "label": kind_label(kind, info["type"]),
                        "groups": len(gs),
                        "rows": sum(len(g.members) for g in gs),
                        "pairs": sum(g.pairs for g in gs),
                        "cross_patient_groups": sum(g.cross_patient for g in gs),
                        "cross_patient_pairs": sum(g.cross_patient_pairs for g in gs),
                        "cross_split_groups": sum(g.cross_split for g in gs),
                        "cross_split_pairs": sum(g.cross_split_pairs for g in gs),
                    }
                )
        return out

    def summary(self) -> str:
        """A few lines for people: what was read and what was found."""
        lines = [
            f"leakage audit of {self.rows} rows ({self.seconds:.1f} s): "
            f"{len(self.cross_split)} group(s) across splits, "
            f"{len(self.cross_patient)} across patients, {len(self.unreadable)} unreadable cell(s)"
        ]
        for c in self.counts():
            if c["groups"]:
                lines.append(
                    f"  {c['modality']}: {c['groups']} group(s) of {c['label']} ({c['pairs']} pairs; "
                    f"{c['cross_patient_pairs']} across patients, {c['cross_split_pairs']} across splits)"
                )
        if not self.groups:
            lines.append("  no duplicates found")
        if self.patient_column is None:
            lines.append("  (no patient column: each sample counts as its own patient)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "seconds": round(self.seconds, 3),
            "near_threshold": self.near_threshold,
            "phash_bits": PHASH_BITS,
            "patient_column": self.patient_column,
            "split_source": self.split_source,
            "modalities": self.modalities,
            "counts": self.counts(),
            "cross_split_groups": len(self.cross_split),
            "cross_patient_groups": len(self.cross_patient),
            "groups": [g.to_dict() for g in self.groups],
            "unreadable": [u.to_dict() for u in self.unreadable],
        }
