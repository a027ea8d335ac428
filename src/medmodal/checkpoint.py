"""One checkpoint file holds everything ``predict`` needs: weights, config, schema,
label map, fitted preprocessors, versions and a data hash.

Only plain Python values and tensors are stored, so loading uses
``torch.load(weights_only=True)`` and never runs pickled code.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmodal import __version__
from medmodal.errors import CheckpointError

FORMAT = "medmodal-checkpoint"
FORMAT_VERSION = 1


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
    if int(body.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{p} was written by a newer medmodal (format {body['format_version']}); upgrade medmodal"
        )
    return body
