"""Small file helpers: checksums and the one strict JSON writer."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def file_digest(path: str | Path, algo: str = "sha256", chunk: int = 1 << 20) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types from numpy scalars/arrays, tensors, Paths, dataclasses, pydantic models
    and sets. NaN and infinities become None (JSON has no NaN); any other object is a TypeError,
    so nothing is written as an unreadable ``str()``."""
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.floating) and obj.itemsize < 8:
        return to_jsonable(float(str(obj)))  # float32 0.001 -> 0.001, not 0.0010000000474
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, np.ndarray) or type(obj).__name__ == "Tensor":
        return to_jsonable(obj.tolist())
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else obj
        return [to_jsonable(v) for v in items]
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "model_dump"):
        return to_jsonable(obj.model_dump(mode="json"))
    if hasattr(obj, "to_dict"):
        return to_jsonable(obj.to_dict())
    raise TypeError(f"cannot write {type(obj).__name__} as JSON: {obj!r:.80}")


def dump_json(path: str | Path, obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as strict JSON (see :func:`to_jsonable`); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(to_jsonable(obj), indent=indent, allow_nan=False) + "\n")
    return p
