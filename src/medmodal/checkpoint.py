"""One checkpoint file holds everything ``predict`` needs: weights, config, schema,
label map, fitted preprocessors, versions and a data hash.

Only plain Python values and tensors are stored, so loading uses
``torch.load(weights_only=True)`` and never runs pickled code.

Format versions. A change to what a file holds bumps :data:`FORMAT_VERSION` and adds the
function that turns a file of the previous version into the new one to :data:`MIGRATIONS`
(``n -> n + 1``); :func:`read_checkpoint` applies them in order, so every reader sees the current
format. History:

1. weights, config, schema, label map, processors, versions (+ extras such as ``data_hash``);
   ``calibration`` / ``conformal`` / ``survival`` only in files written after they existed.
2. ``calibration``, ``conformal`` and ``survival`` are always present in a model checkpoint
   (None when not fitted).
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmodal import __version__
from medmodal.errors import CheckpointError

FORMAT = "medmodal-checkpoint"
FORMAT_VERSION = 2
Migration = Callable[[dict[str, Any]], dict[str, Any]]
# The parts of a model checkpoint (Predictor.payload) that version 1 files may lack.
FITTED_AFTER_TRAINING = ("calibration", "conformal", "survival")


def _v1_to_v2(body: dict[str, Any]) -> dict[str, Any]:
    """Version 1 files written before temperature scaling, conformal sets or survival targets
    lack those keys: a model checkpoint gets them as None (not fitted). Pretraining files
    (``kind``) hold no model and are left as they are."""
    if "model_state" in body and "kind" not in body:
        for key in FITTED_AFTER_TRAINING:
            body.setdefault(key, None)
    return body


# format version n -> the function that turns a version-n body into a version n + 1 body
MIGRATIONS: dict[int, Migration] = {1: _v1_to_v2}


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write atomically (tmp file + rename) so an interruption never leaves half a file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "versions": {
            "medmodal": __version__,
            "torch": str(torch.__version__),
            "python": platform.python_version(),
        },
        **payload,
    }
    body = plain(body)
    tmp = p.with_suffix(p.suffix + ".tmp")
    torch.save(body, tmp)
    tmp.replace(p)
    return p


def plain(obj: Any) -> Any:
    """Only tensors and plain Python values, so ``weights_only`` loading accepts the file."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        return {plain(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if obj is None or type(obj) in (bool, int, float, str):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    for t in (bool, int, float, str):  # subclasses such as TorchVersion or numpy scalars
        if isinstance(obj, t):
            return t(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(
        f"cannot store {type(obj).__name__} in a checkpoint (plain values and tensors only)"
    )


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        body = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise CheckpointError(
            f"cannot read checkpoint {p}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        ) from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a medmodal checkpoint")
    return migrate(body, p)


def migrate(body: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """``body`` brought to :data:`FORMAT_VERSION` through :data:`MIGRATIONS`, in order.
    CheckpointError naming ``path`` for a version this medmodal does not know."""
    version = body.get("format_version")
    if type(version) is not int or version < 1:
        raise CheckpointError(f"{path}: unknown checkpoint format version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer medmodal (format {version}, this one reads up to "
            f"{FORMAT_VERSION}); upgrade medmodal"
        )
    for v in range(version, FORMAT_VERSION):
        if v not in MIGRATIONS:
            raise CheckpointError(f"{path}: no migration from checkpoint format {v} to {v + 1}")
        body = MIGRATIONS[v](body)
        body["format_version"] = v + 1
    return body
