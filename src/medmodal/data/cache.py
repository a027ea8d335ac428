"""The decoded-tensor cache: every sample's model-ready tensors, computed once per run.

:class:`TensorCache` stores each modality's tensor (or each key of a dict of tensors, e.g.
``input_ids`` / ``attention_mask``) stacked over the rows: ``(N, *shape)``. The store lives in
memory (``memory``) or in a NumPy ``.npy`` file memory-mapped from disk (``disk``: the operating
system pages rows in and out, so a data set larger than RAM fits). Both give the same tensors, so
training batches are identical either way. A leaf whose shape varies between rows (rare: every
processor pads or crops to a fixed size) is kept as a list in memory under both modes.

:class:`RawSpill` does the same for the decoded inputs read before the processors are fitted
(``train.cache: disk``): each modality's arrays go to one memory-mapped file as they are read,
so neither the decoded inputs nor the transformed tensors need to fit in RAM.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

CacheMode = Literal["memory", "disk", "none"]
Leaf = torch.Tensor | list[torch.Tensor]


def _flatten(sample: dict[str, Any]) -> dict[tuple[str, ...], torch.Tensor]:
    """``{modality: tensor | {key: tensor}}`` -> ``{(modality,) | (modality, key): tensor}``."""
    out: dict[tuple[str, ...], torch.Tensor] = {}
    for m, v in sample.items():
        if isinstance(v, dict):
            out.update({(m, k): torch.as_tensor(x) for k, x in v.items()})
        else:
            out[(m,)] = torch.as_tensor(v)
    return out


class TensorCache:
    """Stacked per-leaf storage of transformed samples; ``cache[i]`` is sample ``i``'s tensors
    in the shape ``transform`` returned them (``{modality: tensor | {key: tensor}}``)."""

    def __init__(self, leaves: dict[tuple[str, ...], Leaf], n: int, files: list[Path]) -> None:
        self.leaves = leaves
        self.n = n
        self.files = files  # the memory-mapped files (disk mode)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, leaf in self.leaves.items():
            x = leaf[i]
            if len(key) == 1:
                out[key[0]] = x
            else:
                out.setdefault(key[0], {})[key[1]] = x
        return out

    @property
    def in_memory_leaves(self) -> list[str]:
        """Leaves kept as lists in memory (their shape varies between rows)."""
        return [".".join(k) for k, v in self.leaves.items() if isinstance(v, list)]

    @property
    def nbytes(self) -> int:
        """Bytes held by the stacked leaves (in memory or in the mapped files)."""
        return sum(
            v.numel() * v.element_size()
            for v in self.leaves.values()
            if isinstance(v, torch.Tensor)
        )


def build_cache(
    transform: Callable[[int], dict[str, Any]],
    n: int,
    mode: Literal["memory", "disk"] = "memory",
    directory: Path | None = None,
) -> TensorCache:
    """Transform rows ``0..n-1`` once into a :class:`TensorCache`. ``disk``: one ``.npy`` file
    per leaf under ``directory``, written row by row (no full copy is held in RAM), then
    unlinked while mapped, so its space returns when the run ends, also after a crash."""
    if mode == "disk" and directory is None:
        raise ValueError("a disk cache needs a directory")
    leaves: dict[tuple[str, ...], Leaf] = {}
    maps: dict[Path, np.memmap] = {}
    for i in range(n):
        for key, x in _flatten(transform(i)).items():
            leaf = leaves.get(key)
            if leaf is None:
                leaf = leaves[key] = _allocate(key, x, n, mode, directory, maps)
            if isinstance(leaf, torch.Tensor) and tuple(leaf.shape[1:]) != tuple(x.shape):
                leaf = leaves[key] = [leaf[j].clone() for j in range(i)]
            if isinstance(leaf, list):
                leaf.append(x)
            else:
                leaf[i] = x
    for mm in maps.values():
        mm.flush()
    return TensorCache(leaves, n, list(maps))


def _allocate(
    key: tuple[str, ...],
    x: torch.Tensor,
    n: int,
    mode: str,
    directory: Path | None,
    maps: dict[Path, np.memmap],
) -> torch.Tensor:
    """An empty ``(n, *x.shape)`` tensor of ``x``'s dtype, in memory or on a mapped file."""
    if mode == "memory" or x.dtype == torch.bfloat16:  # NumPy has no bfloat16
        return torch.empty((n, *x.shape), dtype=x.dtype)
    assert directory is not None
    path = directory / f"{'.'.join(key)}.npy"
    dtype = torch.empty(0, dtype=x.dtype).numpy().dtype
    maps[path] = mm = open_unlinked(path, dtype, (n, *x.shape))
    return torch.from_numpy(mm)


def open_unlinked(path: Path, dtype: Any, shape: tuple[int, ...]) -> np.memmap:
    """A new ``.npy`` file memory-mapped for writing, then unlinked: the mapping stays valid
    and the space returns when it is closed, also after a crash (Windows keeps mapped files:
    there it stays in the run folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    try:
        path.unlink()
    except OSError:
        pass
    return mm


class RawSpill:
    """Decoded inputs of up to ``n`` rows, one memory-mapped ``.npy`` file per modality.

    :meth:`put` writes a NumPy array (or a subclass such as a signal that carries its sampling
    rate: the view keeps the type and its attributes) into row ``i`` of its modality's file and
    returns a view of it (file-backed pages, which the kernel can drop and read back); values of
    another type, or of another shape or dtype than the modality's first array, are returned
    unchanged (kept in memory). Files are unlinked once mapped, so their space returns when the run ends.
    """

    def __init__(self, directory: Path, n: int) -> None:
        self.directory, self.n = Path(directory), n
        self.maps: dict[str, np.memmap] = {}

    def put(self, modality: str, i: int, value: Any) -> Any:
        if (
            not isinstance(value, np.ndarray)
            or isinstance(value, np.memmap)
            or value.dtype == object
        ):
            return value
        mm = self.maps.get(modality)
        if mm is None:
            path = self.directory / f"{modality}.npy"
            mm = self.maps[modality] = open_unlinked(path, value.dtype, (self.n, *value.shape))
        if mm.shape[1:] != value.shape or mm.dtype != value.dtype:
            return value
        mm[i] = value
        view = np.asarray(mm[i])
        if type(value) is not np.ndarray:  # a subclass: its type and attributes
            view = view.view(type(value))
            view.__dict__.update(value.__dict__)
        return view
