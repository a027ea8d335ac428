"""One sample as the model sees it, and the score an explanation explains.

An :class:`Item` is one sample of a finalised dataset as a batch of one (the processed tensors and
the presence mask, exactly what :func:`medmodal.predictor.predict_logits` feeds the model). A
:class:`ModelScore` is the function every attribution method differentiates: the target class's
logit with one modality's input replaced and every other modality fixed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmodal.data.dataset import MultimodalDataset, collate
from medmodal.data.manifest import LabelMap
from medmodal.errors import ConfigError
from medmodal.models import MultimodalModel
from medmodal.predictor import to_device


@dataclass
class Item:
    """One sample as a batch of one: ``inputs`` {modality: (1, ...)}, ``present`` {modality:
    (1,) bool}, the cached ``raw`` reads (text tokens), the manifest ``row`` and its ``root``."""

    index: int
    sample_id: str
    inputs: dict[str, Any]
    present: dict[str, torch.Tensor]
    raw: dict[str, Any]
    row: Mapping[str, Any]
    root: Path | None
    label: Any = None


def item_of(ds: MultimodalDataset, i: int, device: torch.device | str = "cpu") -> Item:
    """Sample ``i`` of a finalised dataset (evaluation mode: never augmented)."""
    was_train, ds.train = ds.train, False
    try:
        batch = collate([ds[i]])
    finally:
        ds.train = was_train
    device = torch.device(device)
    label = None if ds.labels is None else np.asarray(ds.labels)[i]
    return Item(
        index=i,
        sample_id=str(ds.ids[i]),
        inputs=to_device(batch["inputs"], device),
        present=to_device(batch["present"], device),
        raw=ds.raw[i],
        row=ds.rows[i],
        root=ds.root,
        label=label,
    )


def target_score(logits: torch.Tensor, task: str, target: int) -> torch.Tensor:
    """(B,) score of class ``target``: its logit (binary: the logit, negated for class 0)."""
    if task == "binary":
        z = logits.reshape(-1)
        return z if target == 1 else -z
    return logits[:, target]


def target_prob(logits: torch.Tensor, task: str, target: int) -> torch.Tensor:
    """(B,) probability of class ``target`` (binary / multilabel: sigmoid; multiclass: softmax)."""
    if task == "multiclass":
        return torch.softmax(logits, dim=1)[:, target]
    return torch.sigmoid(target_score(logits, task, target))


def resolve_target(label_map: LabelMap, probs: np.ndarray, target: str | None) -> int:
    """Index of the class to explain: ``target`` by name, else the predicted class (binary:
    the more probable class; multilabel: the most probable label)."""
    classes = label_map.classes
    if target is not None:
        if target not in classes:
            raise ConfigError(f"unknown target class {target!r}; classes: {', '.join(classes)}")
        return classes.index(target)
    p = np.asarray(probs, dtype=float).reshape(-1)
    if label_map.task == "binary":
        return int(p[0] > 0.5)
    return int(np.argmax(p))


def expand(x: Any, batch: int) -> Any:
    """A batch-of-one input (tensor or dict of tensors) repeated to ``batch`` rows (a view)."""
    if isinstance(x, torch.Tensor):
        return x.expand(batch, *x.shape[1:])
    if isinstance(x, dict):
        return {k: expand(v, batch) for k, v in x.items()}
    return x


class ModelScore:
    """``f(x, *extra)`` = the target score with modality ``modality``'s input built by
    ``assemble(x, *extra)`` (default: ``x`` itself) and every other modality of ``item`` fixed.

    The fixed modalities are encoded once (their embeddings, or missing tokens, are repeated for
    every row); the explained modality goes through its encoder and everything then through the
    model's own fusion and head (:meth:`MultimodalModel.fuse`). ``probability=True`` returns the
    target probability instead of its logit score."""

    def __init__(
        self,
        model: MultimodalModel,
        item: Item,
        modality: str,
        task: str,
        target: int,
        assemble: Callable[..., Any] | None = None,
        probability: bool = False,
    ) -> None:
        self.model, self.item, self.modality = model, item, modality
        self.task, self.target = task, target
        self.assemble = assemble or (lambda x, *extra: x)
        self.probability = probability
        if not bool(item.present[modality].all()):
            raise ConfigError(f"sample {item.sample_id!r} has no {modality!r} to explain")
        with torch.no_grad():
            self.fixed = model.embed(item.inputs, item.present)

    def __call__(self, x: torch.Tensor, *extra: Any) -> torch.Tensor:
        b = int(x.shape[0])
        embs = {m: e.expand(b, -1) for m, e in self.fixed.items() if m != self.modality}
        embs[self.modality] = self.model.encode(self.modality, self.assemble(x, *extra))
        present = {m: v.expand(b) for m, v in self.item.present.items()}
        logits = self.model.fuse(embs, present).logits
        if self.probability:
            return target_prob(logits, self.task, self.target)
        return target_score(logits, self.task, self.target)
