"""Images for pretraining: read through the run's readers and processors, labels never used.

A labelled manifest (or built-in dataset) is split exactly as ``medmodal train`` splits it with
the same ``data`` section and seed (the manifest's split column, else the seeded patient split;
the labels only stratify that split), and only its ``train`` rows are used unless
``include_test`` is set. An unlabelled manifest uses its split column's ``train`` rows, or every
row when it has none (it holds no evaluation split). The image processor (normalisation) is fitted
on the rows used.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from medmodal.config import DataConfig, ExperimentConfig
from medmodal.data.dataset import MultimodalDataset
from medmodal.data.manifest import check_columns, read_manifest, read_splits, sample_ids
from medmodal.data.preprocess import create_processor
from medmodal.data.schema import Schema
from medmodal.errors import BadSampleLog, ConfigError, ManifestError
from medmodal.predictor import build_dataset, make_processors
from medmodal.run.data import assign_splits, load_data, resolve_source
from medmodal.run.pretrained import image_keys
from medmodal.utils.runtime import epoch_seed


@dataclass
class ImageSource:
    """The pretraining rows of one manifest: dataset (processor fitted on them, finalised)."""

    source: str
    modality: str
    dataset: MultimodalDataset
    splits: dict[str, int] = field(default_factory=dict)  # rows used per split
    rows: int = 0  # readable rows in the manifest

    @property
    def info(self) -> dict[str, Any]:
        return self.dataset.processors[self.modality].info()

    def summary(self, used: list[str]) -> dict[str, Any]:
        """Where the images came from and which were used (``used``: their sample ids)."""
        return {
            "source": self.source,
            "modality": self.modality,
            "images": len(used),
            "rows_in_manifest": self.rows,
            "splits_used": self.splits,
            "sample_ids": used,
        }


def image_modality(schema: Schema, wanted: str | None) -> str:
    """The modality to pretrain on: ``wanted`` (must be an image modality) or the only one."""
    images = [m for m, s in schema.modalities.items() if s.type == "image"]
    if wanted is not None:
        if wanted not in images:
            raise ConfigError(
                f"modality: {wanted!r} is not an image modality of the schema {images}"
            )
        return wanted
    if len(images) != 1:
        raise ConfigError(f"modality: the schema has image modalities {images}; name one")
    return images[0]


def load_source(
    data: DataConfig,
    *,
    seed: int,
    work: Path,
    modality: str | None,
    include_test: bool,
    like: dict[str, Any] | None = None,
    progress: bool = False,
) -> ImageSource:
    """Read one source's images. ``like`` (another source's processor info) forces the same
    size and channels, so sources can be mixed."""
    exp = ExperimentConfig(name="pretrain", seed=seed, data=data)
    manifest, schema, _ = resolve_source(exp, work)
    m = image_modality(schema, modality)
    spec = schema.modalities[m]
    if like is not None:
        pre = {**spec.preprocess, "size": list(like["size"]), "channels": like["in_channels"]}
        spec = spec.model_copy(update={"preprocess": pre})
    schema = schema.model_copy(update={"modalities": {m: spec}})
    data = data.model_copy(
        update={"schema_": schema.model_dump(mode="json", exclude_none=True), "modalities": None}
    )
    exp = exp.model_copy(update={"data": data})
    frame = read_manifest(manifest)
    labelled = all(c in frame.columns for c in schema.target.label_columns())
    if labelled:
        loaded = load_data(exp, work, progress)
        ds, splits = loaded.dataset, assign_splits(loaded)
    else:
        ds, splits = _unlabelled(frame, schema, exp, manifest, progress)
    keep = {"train", "val", "test"} if include_test else {"train"}
    rows = [i for i, s in enumerate(splits) if s in keep and ds.raw[i][m] is not None]
    if not rows:
        raise ManifestError(f"manifest {manifest}: no image in the {sorted(keep)} split(s)")
    used = _fit(ds, rows, m)
    counts = dict(Counter(str(splits[i]) for i in rows))
    return ImageSource(str(manifest), m, used, counts, len(ds))


def _unlabelled(
    frame: Any, schema: Schema, exp: ExperimentConfig, manifest: Path, progress: bool
) -> tuple[MultimodalDataset, np.ndarray]:
    """No target column: the split column's values, else every row is a training row."""
    source = str(manifest)
    check_columns(frame, schema, source, need_labels=False)
    root = Path(exp.data.root) if exp.data.root else manifest.parent
    bad = BadSampleLog() if exp.data.skip_bad else None
    ds = build_dataset(frame, schema, make_processors(schema), root, None, bad, source, progress)
    col = read_splits(frame, schema, sample_ids(frame, schema, source), source)
    if col is None:
        return ds, np.full(len(ds), "train", dtype=object)
    by_id = dict(zip(sample_ids(frame, schema, source), col, strict=True))
    return ds, np.array([by_id[i] for i in ds.ids], dtype=object)


def _fit(ds: MultimodalDataset, rows: list[int], modality: str) -> MultimodalDataset:
    """The rows as a dataset with a fresh processor fitted on them (normalisation), finalised."""
    proc = create_processor(modality, ds.processors[modality].spec)
    part = ds.subset(rows, {modality: proc})
    proc.fit(part.raws_of(modality))
    return part.finalize()


class ImageView(Dataset):
    """The image tensors of one or more sources (augmented when training, seeded per epoch);
    ``limit`` keeps a seeded random subset of them."""

    def __init__(self, sources: list[ImageSource], limit: int | None = None, seed: int = 0) -> None:
        self.sources = sources
        self.parts = ConcatDataset([_One(s.dataset, s.modality) for s in sources])
        n = len(self.parts)
        self.index = list(range(n))
        if limit is not None and limit < n:
            g = torch.Generator().manual_seed(epoch_seed(seed, 0, 6))
            self.index = sorted(torch.randperm(n, generator=g)[:limit].tolist())

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.parts[self.index[i]]

    def set_epoch(self, train: bool, seed: int, epoch: int) -> None:
        for k, s in enumerate(self.sources):
            s.dataset.train = train
            s.dataset.generator = torch.Generator().manual_seed(epoch_seed(seed, epoch, 10 + k))

    def rows(self) -> list[list[int]]:
        """Per source, the rows (of its dataset) of the images used."""
        out: list[list[int]] = [[] for _ in self.sources]
        ends = self.parts.cumulative_sizes
        for j in self.index:
            k = int(np.searchsorted(ends, j, side="right"))
            out[k].append(j - (ends[k - 1] if k else 0))
        return out

    def sample_ids(self) -> list[list[str]]:
        """Per source, the sample ids of the images used."""
        return [
            [s.dataset.ids[i] for i in r] for s, r in zip(self.sources, self.rows(), strict=True)
        ]

    def content_keys(self) -> set[str]:
        """The content key of every image used (:func:`medmodal.run.pretrained.image_keys`)."""
        keys: set[str] = set()
        for s, rows in zip(self.sources, self.rows(), strict=True):
            keys.update(image_keys(s.dataset, s.modality, rows))
        return keys


class _One(Dataset):
    def __init__(self, ds: MultimodalDataset, modality: str) -> None:
        self.ds, self.modality = ds, modality

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.ds[i][self.modality]
