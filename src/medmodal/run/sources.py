"""Inputs to predict or evaluate: a manifest file, a DataFrame, or a folder of images; and the
leakage audit a training run writes beside its checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medmodal.data.manifest import read_manifest, sample_ids
from medmodal.data.readers import image_suffixes
from medmodal.data.readers.table import suffix_of
from medmodal.errors import ConfigError, ManifestError
from medmodal.predictor import Predictor
from medmodal.run.data import LoadedData
from medmodal.utils.io import dump_json


def frame_from_source(
    source: str | Path | pd.DataFrame, predictor: Predictor
) -> tuple[pd.DataFrame, Path | None, str]:
    """(rows, data root, name) of a manifest file, a DataFrame, or a folder of images (for
    models with one image modality; the reader table decides which files are images)."""
    if isinstance(source, pd.DataFrame):
        return source, None, "dataframe"
    p = Path(source)
    if not p.is_dir():
        return read_manifest(p), p.parent, str(p)
    images = [m for m, s in predictor.schema.modalities.items() if s.type == "image"]
    if len(images) != 1:
        raise ConfigError(
            "a folder can be predicted only by a model with exactly one image modality; "
            "give a manifest"
        )
    known = set(image_suffixes())
    files = sorted(f for f in p.rglob("*") if f.is_file() and suffix_of(f) in known)
    if not files:
        raise ManifestError(f"folder {p} holds no image files ({', '.join(sorted(known))})")
    rel = [str(f.relative_to(p)) for f in files]
    frame = pd.DataFrame({predictor.schema.modalities[images[0]].column: rel})
    if predictor.schema.id_column:
        frame[predictor.schema.id_column] = rel
    return frame, p, str(p)


def audit_run(
    loaded: LoadedData, splits: np.ndarray | None, run_dir: Path, console: Any = None
) -> dict[str, Any] | None:
    """Duplicate inputs across patients (and splits, when given) among the loaded rows; writes
    ``audit.json`` and warns on the console when a group crosses patients or splits."""
    if not loaded.cfg.data.audit:
        return None
    from medmodal.audit import audit_manifest

    ids = sample_ids(loaded.frame, loaded.schema, str(loaded.manifest))
    row_of = {sid: i for i, sid in enumerate(ids)}
    frame = loaded.frame.iloc[[row_of[s] for s in loaded.dataset.ids]].reset_index(drop=True)
    split_list = None if splits is None else [str(s) for s in splits]
    report = audit_manifest(frame, loaded.schema, loaded.root, splits=split_list)
    dump_json(run_dir / "audit.json", report.to_dict())
    if console is not None and (report.cross_split or report.cross_patient):
        console.print(f"[yellow]warning:[/] {report.summary()}", highlight=False, soft_wrap=True)
    return report.to_dict()


def one_split(
    frame: pd.DataFrame, predictor: Predictor, split: str | None, name: str
) -> pd.DataFrame:
    """The rows of ``split`` (by the schema's split column); all rows when ``split`` is None."""
    if split is None:
        return frame
    col = predictor.schema.split_column
    if not col or col not in frame.columns:
        raise ManifestError(f"{name} has no split column to select {split!r} from")
    frame = frame[frame[col].astype(str).str.lower() == split]
    if frame.empty:
        raise ManifestError(f"{name} has no rows in split {split!r}")
    return frame
