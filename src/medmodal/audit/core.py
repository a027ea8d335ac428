"""``audit_manifest``: read a manifest's files and notes once and report every duplicate group."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from medmodal.audit.collect import AUDITED_TYPES, collect
from medmodal.audit.hashing import NEAR_THRESHOLD
from medmodal.audit.report import AuditReport, find_groups
from medmodal.data.manifest import SPLITS, check_columns, patient_ids, read_manifest, sample_ids
from medmodal.data.schema import Schema
from medmodal.errors import ConfigError, ManifestError


def audit_manifest(
    manifest: pd.DataFrame | str | Path,
    schema: Schema | str | Path | dict[str, Any],
    root: str | Path | None = None,
    splits: Sequence[str | None] | None = None,
    *,
    near_threshold: int | None = NEAR_THRESHOLD,
    modalities: Sequence[str] | None = None,
    progress: bool = False,
) -> AuditReport:
    """Find duplicated images, signals, audio and notes across patients and splits.

    ``manifest``: a table or a CSV / Parquet path; ``root``: the folder relative paths
    start from (default: the manifest's folder, or the working directory for a table).
    ``splits``: one ``train`` / ``val`` / ``test`` (or None) per row; default: the
    schema's ``split_column`` when it has one, else no split classification.
    ``near_threshold``: pHash Hamming distance (of 256 bits) for near-identical images;
    None turns the perceptual comparison off. ``modalities``: audit only these.
    Unreadable files are listed in the report, never raised.
    """
    t0 = time.perf_counter()
    schema = Schema.load(schema)
    frame, source, base = _table(manifest, root)
    check_columns(frame, schema, source, need_labels=False)
    ids = sample_ids(frame, schema, source)
    patients = patient_ids(frame, schema, ids, source)
    split_of, split_source = _splits(frame, schema, splits, source)
    report = AuditReport(
        rows=len(frame),
        near_threshold=near_threshold,
        patient_column=schema.patient_column,
        split_source=split_source,
    )

    def who(row: int) -> tuple[str, str, str | None]:
        return ids[row], patients[row], split_of[row]

    for name in _audited(schema, modalities):
        spec = schema.modalities[name]
        got = collect(
            name,
            spec,
            frame[spec.column].tolist(),
            ids,
            base,
            near=near_threshold is not None,
            track=_track if progress else None,
        )
        report.groups += find_groups(name, spec.type, got.entries, who, near_threshold)
        report.unreadable += got.unreadable
        report.modalities[name] = {"type": spec.type, **got.counts()}
    report.sort()
    report.seconds = time.perf_counter() - t0
    return report


def _table(
    manifest: pd.DataFrame | str | Path, root: str | Path | None
) -> tuple[pd.DataFrame, str, Path | None]:
    """(rows, name for messages, root): a path's root defaults to the manifest's folder."""
    if isinstance(manifest, pd.DataFrame):
        return manifest.reset_index(drop=True), "table", None if root is None else Path(root)
    base = Path(manifest).resolve().parent if root is None else Path(root)
    return read_manifest(manifest), str(manifest), base


def _splits(
    frame: pd.DataFrame, schema: Schema, splits: Sequence[str | None] | None, source: str
) -> tuple[list[str | None], str | None]:
    """Split per row (None where unknown) and where it came from."""
    if splits is not None:
        values, origin = list(splits), "argument"
        if len(values) != len(frame):
            raise ManifestError(
                f"manifest {source}: {len(values)} split values for {len(frame)} rows"
            )
    elif schema.split_column:
        values, origin = frame[schema.split_column].tolist(), schema.split_column
    else:
        return [None] * len(frame), None
    out: list[str | None] = []
    for v in values:
        s = None if v is None or (isinstance(v, float) and v != v) else str(v).strip().lower()
        if s is not None and s not in SPLITS:
            raise ManifestError(
                f"manifest {source}: split value {v!r} is not one of {list(SPLITS)}"
            )
        out.append(s or None)
    return out, origin


def _audited(schema: Schema, wanted: Sequence[str] | None) -> list[str]:
    """Modalities to audit: every image / audio / signal / text one, or those asked for."""
    names = [n for n, s in schema.modalities.items() if s.type in AUDITED_TYPES]
    if wanted is None:
        return names
    bad = [n for n in wanted if n not in names]
    if bad:
        raise ConfigError(
            f"cannot audit modality {bad}: the schema's image / audio / signal / text "
            f"modalities are {names}"
        )
    return [n for n in names if n in wanted]


def _track(cells: Iterable[Any], name: str) -> Iterable[Any]:
    from rich.progress import track

    cells = list(cells)
    return track(cells, description=f"audit {name}", total=len(cells), transient=True)
