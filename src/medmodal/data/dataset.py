"""MultimodalDataset: manifest rows -> Sample dicts, with a cache and honest bad-input handling.

A Sample is ``{"id", "patient_id", "label", "present": {modality: bool}, <modality>: tensor}``.
Reading happens once (``load``) for every row and modality: outputs of the
stateless stage are cached, so no epoch decodes a file twice; after the
processors are fitted, ``finalize`` also caches the transformed tensors, stacked per modality in
memory or memory-mapped from disk (:mod:`medmodal.data.cache`), or not at all (``none``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress
from torch.utils.data import Dataset

from medmodal.data.cache import CacheMode, RawSpill, TensorCache, build_cache
from medmodal.data.preprocess.base import ModalityProcessor
from medmodal.errors import BadSampleLog, DataError


class MultimodalDataset(Dataset):
    """Rows of a manifest as Samples.

    Parameters
    ----------
    rows: one mapping per sample with the manifest's columns.
    ids, patients: sample and patient id per row.
    labels: encoded labels (int per row, or a float vector for multilabel) or None.
    processors: modality name -> processor.
    root: base directory for relative paths in the manifest.
    """

    def __init__(
        self,
        rows: Sequence[Mapping[str, Any]],
        ids: Sequence[str],
        patients: Sequence[str],
        labels: np.ndarray | None,
        processors: Mapping[str, ModalityProcessor],
        root: Path | None = None,
    ) -> None:
        self.rows = list(rows)
        self.ids = list(ids)
        self.patients = list(patients)
        self.labels = labels
        self.processors = dict(processors)
        self.root = root
        self.raw: list[dict[str, Any]] = []
        self.cached: TensorCache | None = None
        self.train = False
        self.generator: torch.Generator | None = None
        self.bad_inputs: list[dict[str, str]] = []  # per row: modality -> reason it was unreadable

    def __len__(self) -> int:
        return len(self.ids)

    # -- stage 1 ---------------------------------------------------------------------
    def load(
        self,
        bad: BadSampleLog | None = None,
        progress: bool = False,
        label: str = "reading",
        spill: Path | None = None,
    ) -> MultimodalDataset:
        """Read every row once. A bad row raises DataError, or is logged and dropped
        when ``bad`` is given (``--skip-bad``); a modality with ``on_bad: missing``
        becomes absent and is counted instead. ``spill``: a folder where decoded arrays are
        memory-mapped (:class:`~medmodal.data.cache.RawSpill`) instead of held in RAM."""
        store = RawSpill(spill, len(self.rows)) if spill is not None else None
        keep: list[int] = []
        raws: list[dict[str, Any]] = []
        flags: list[dict[str, str]] = []
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task(label, total=len(self.rows))
            for i, row in enumerate(self.rows):
                try:
                    raw, flag = self._read_row(i, row)
                    if store is not None:
                        raw = {m: store.put(m, len(raws), v) for m, v in raw.items()}
                    raws.append(raw)
                    flags.append(flag)
                    keep.append(i)
                except DataError as err:
                    if bad is None:
                        raise
                    bad.add(err)
                bar.advance(task)
        self._keep(keep)
        self.raw = raws
        self.bad_inputs = flags
        return self

    def _read_row(self, i: int, row: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        out: dict[str, Any] = {}
        flags: dict[str, str] = {}
        for m, proc in self.processors.items():
            try:
                value = proc.read(row, self.root)
            except DataError as err:
                err = err.with_context(sample_id=self.ids[i], modality=m)
                if proc.spec.on_bad == "missing":
                    flags[m] = str(err)
                    out[m] = None
                    continue
                raise err from None
            if value is None and not proc.spec.allow_missing:
                raise DataError(
                    "modality is empty and allow_missing is false",
                    sample_id=self.ids[i],
                    modality=m,
                )
            out[m] = value
        return out, flags

    def _keep(self, keep: list[int]) -> None:
        self.rows = [self.rows[i] for i in keep]
        self.ids = [self.ids[i] for i in keep]
        self.patients = [self.patients[i] for i in keep]
        if self.labels is not None:
            self.labels = self.labels[keep]

    def subset(
        self, index: Sequence[int], processors: Mapping[str, ModalityProcessor] | None = None
    ) -> MultimodalDataset:
        """Rows ``index`` as a new dataset sharing the cached reads (optionally other processors,
        e.g. freshly fitted ones for one cross-validation fold)."""
        idx = [int(i) for i in index]
        ds = MultimodalDataset(
            [self.rows[i] for i in idx],
            [self.ids[i] for i in idx],
            [self.patients[i] for i in idx],
            None if self.labels is None else self.labels[idx],
            processors or self.processors,
            self.root,
        )
        ds.raw = [self.raw[i] for i in idx]
        ds.bad_inputs = [self.bad_inputs[i] for i in idx]
        return ds

    @property
    def missing_counts(self) -> dict[str, dict[str, int]]:
        """Per modality: rows where it is absent (empty cell) and rows where it was unreadable
        but counted as missing (``on_bad: missing``)."""
        out = {}
        for m in self.processors:
            bad = sum(1 for f in self.bad_inputs if m in f)
            absent = sum(1 for r in self.raw if r[m] is None) - bad
            out[m] = {"absent": absent, "bad": bad}
        return out

    # -- stage 2 ---------------------------------------------------------------------
    def raws_of(self, modality: str) -> list[Any]:
        return [r[modality] for r in self.raw]

    def finalize(
        self, cache: CacheMode = "memory", directory: Path | None = None
    ) -> MultimodalDataset:
        """Cache the transformed tensors once (processors must be fitted): ``memory``, ``disk``
        (memory-mapped files under ``directory``) or ``none`` (transform on every access)."""
        self.cached = None
        if cache != "none":
            raw = self.raw
            self.cached = build_cache(lambda i: self._transform(raw[i]), len(raw), cache, directory)
        return self

    def _transform(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for m, proc in self.processors.items():
            v = raw[m]
            out[m] = proc.missing() if v is None else proc.transform(v)
        return out

    def present_matrix(self) -> np.ndarray:
        """(N, M) bool: which modality is present in which sample."""
        return np.array([[r[m] is not None for m in self.processors] for r in self.raw], dtype=bool)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not self.raw:
            raise RuntimeError("call load() before indexing the dataset")
        tensors = self.cached[i] if self.cached is not None else self._transform(self.raw[i])
        present = {m: self.raw[i][m] is not None for m in self.processors}
        sample: dict[str, Any] = {
            "id": self.ids[i],
            "patient_id": self.patients[i],
            "present": present,
        }
        for m, x in tensors.items():
            if self.train:
                x = self.processors[m].train_input(x, present[m], self.generator)
            sample[m] = x
        if self.labels is not None:
            sample["label"] = self.labels[i]
        return sample


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack Samples into a batch: ``{"id", "patient_id", "label", "inputs", "present"}``."""
    mods = list(samples[0]["present"])
    batch: dict[str, Any] = {
        "id": [s["id"] for s in samples],
        "patient_id": [s["patient_id"] for s in samples],
        "present": {
            m: torch.tensor([s["present"][m] for s in samples], dtype=torch.bool) for m in mods
        },
        "inputs": {m: _stack([s[m] for s in samples]) for m in mods},
    }
    if "label" in samples[0]:
        batch["label"] = torch.as_tensor(np.stack([np.asarray(s["label"]) for s in samples]))
    return batch


def _stack(xs: list[Any]) -> Any:
    if isinstance(xs[0], dict):
        return {k: _stack([x[k] for x in xs]) for k in xs[0]}
    return torch.stack([torch.as_tensor(x) for x in xs])
