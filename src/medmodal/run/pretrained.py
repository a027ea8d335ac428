"""Did an encoder's pretraining see this run's validation or test images?

A pretraining checkpoint (``medmodal pretrain``, kind ``pretrained-encoder``) records a content
key of every image its encoder trained on (``images.content_keys``): the audit's byte-level key
(:func:`medmodal.audit.image_key`: sha256 of the file, or of an ``.npz`` member's array) cut to
:data:`KEY_CHARS` hex digits, so the same image under another id or path is caught; a re-encoded
or resized copy is not. Before a run trains from such a checkpoint
(``model.encoders.<modality>.init``), :func:`check_pretrained_inits` keys the run's evaluation
images (rows marked ``val``, ``test`` or ``holdout``; not rows a run leaves out) the same way. Images the pretraining saw are a DataError
unless ``init_allow_overlap: true``; those whose content a row the run does not score (train, or left out) holds too
are counted, not raised (fine-tuning sees them anyway; the leakage audit reports them).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmodal.audit import image_key
from medmodal.config import EncoderSpec
from medmodal.data.dataset import MultimodalDataset
from medmodal.errors import DataError
from medmodal.run.data import LoadedData

KIND = "pretrained-encoder"  # the kind of medmodal checkpoint ``medmodal pretrain`` writes
KEY_SCHEME = "audit-image-key/sha256-16"  # how ``content_keys`` were made (else: not comparable)
KEY_CHARS = 16  # hex digits kept of each sha256 (64 bits: no chance collision at any data size)
EXAMPLES = 5  # sample ids named in a message


class InitCheckWarning(UserWarning):
    """An encoder init whose pretraining images could not be checked, or overlap that was allowed."""


def image_keys(ds: MultimodalDataset, modality: str, rows: Iterable[int]) -> list[str]:
    """The content key of ``modality``'s image in each of ``rows`` (rows must hold one)."""
    column = ds.processors[modality].spec.column
    return [image_key(str(ds.rows[int(i)][column]), ds.root)[:KEY_CHARS] for i in rows]


def read_record(path: str | Path) -> tuple[bool, set[str] | None]:
    """(whether ``path`` is a pretrained-encoder checkpoint, the content keys it records or None
    when it records none: written before they were, or with another key scheme)."""
    body: Any = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(body, dict) or body.get("kind") != KIND:
        return False, None
    images = body.get("images")
    if not isinstance(images, dict) or images.get("key_scheme") != KEY_SCHEME:
        return True, None
    keys = images.get("content_keys")
    return True, set(keys) if isinstance(keys, list) else None


def unrecorded_inits(path: str | Path) -> list[str]:
    """Checkpoints earlier in a pretraining chain (``encoder.init``) that recorded no images."""
    body: Any = torch.load(path, map_location="cpu", weights_only=True)
    images = body.get("images") if isinstance(body, dict) else None
    return list(images.get("unrecorded_inits") or []) if isinstance(images, dict) else []


def check_pretrained_inits(
    loaded: LoadedData, splits: np.ndarray, console: Any = None
) -> dict[str, dict[str, Any]]:
    """For each encoder of ``loaded``'s modalities that starts from a file: what was checked
    (``metrics.json`` ``encoder_init``). DataError when a pretraining saw evaluation images."""
    out: dict[str, dict[str, Any]] = {}
    for modality, spec in loaded.cfg.model.encoders.items():
        if spec.init is None or modality not in loaded.schema.modalities:
            continue
        out[modality] = check_init(loaded, splits, modality, spec)
        if console is not None:
            console.print(
                f"encoder init {modality!r}: {out[modality]['summary']}",
                highlight=False,
                soft_wrap=True,
            )
    return out


def check_init(
    loaded: LoadedData, splits: np.ndarray, modality: str, spec: EncoderSpec
) -> dict[str, Any]:
    """One encoder's check (see the module docstring); warns when it cannot check."""
    path = str(spec.init)
    record: dict[str, Any] = {"checkpoint": path, "allow_overlap": spec.init_allow_overlap}
    pretrained, keys = read_record(path)
    if not pretrained or loaded.schema.modalities[modality].type != "image":
        summary = "not an image pretraining checkpoint (medmodal pretrain): no images to check"
        return {**record, "status": "not_pretrained", "summary": summary}
    if keys is None:
        summary = (
            f"{path} records no image keys (written by an older medmodal, or another key "
            "scheme): cannot check whether its pretraining saw this run's validation or test images"
        )
        _warn(modality, summary)
        return {**record, "status": "unrecorded", "summary": summary}
    record.update(_overlap(loaded, splits, modality, keys), pretrain_images=len(keys))
    seen = record["overlap"]
    if seen and not spec.init_allow_overlap:
        raise DataError(_overlap_reason(record, modality), path=path, modality=modality)
    record["status"] = "overlap_allowed" if seen else "checked"
    record["summary"] = _summary(record)
    if seen:
        _warn(modality, f"{path}: {record['summary']} (allowed by init_allow_overlap)")
    for earlier in unrecorded_inits(path):
        _warn(modality, f"{path} started from {earlier}, which records no images: not checked")
        record.setdefault("unrecorded_inits", []).append(earlier)
    return record


# rows a run scores (tune keeps its test rows as "holdout"); rows a run leaves out ("unused", e.g.
# a label subset) are neither trained on nor scored, so pretraining on them is no leak
EVALUATED = ("val", "test", "holdout")


def _overlap(
    loaded: LoadedData, splits: np.ndarray, modality: str, keys: set[str]
) -> dict[str, Any]:
    """Evaluation images per split, those the pretraining saw (per split, a few ids), and how many
    more it saw whose content a row this run does not score holds too (a duplicate inside the
    data set, e.g. a validation image repeated in the training split, which a label-subset run
    marks ``unused``: the audit's finding, not a pretraining leak)."""
    ds, split = loaded.dataset, np.asarray(splits).astype(str)
    present = np.array([r[modality] is not None for r in ds.raw], dtype=bool)
    held = np.flatnonzero(present & np.isin(split, EVALUATED))
    found = image_keys(ds, modality, held)
    seen = [(int(i), k) for i, k in zip(held, found, strict=True) if k in keys]
    also_train = 0
    if seen:  # only then: key the rows the run does not score too
        rest = np.flatnonzero(present & ~np.isin(split, EVALUATED))
        train = set(image_keys(ds, modality, rest))
        only = [(i, k) for i, k in seen if k not in train]
        also_train, seen = len(seen) - len(only), only
    rows = [i for i, _ in seen]
    return {
        "evaluation_images": dict(Counter(str(split[i]) for i in held)),
        "overlap": dict(Counter(str(split[i]) for i in rows)),
        "overlap_ids": [ds.ids[i] for i in rows[:EXAMPLES]],
        "overlap_also_in_training": also_train,
    }


def _counts(by_split: dict[str, int]) -> str:
    return ", ".join(f"{s} {n}" for s, n in sorted(by_split.items()))


def _summary(record: dict[str, Any]) -> str:
    n_eval = sum(record["evaluation_images"].values())
    seen = sum(record["overlap"].values())
    text = (
        f"checked against {n_eval} validation/test images ({_counts(record['evaluation_images'])}): "
        + (f"the pretraining saw {seen} ({_counts(record['overlap'])})" if seen else "no overlap")
    )
    if record["overlap_also_in_training"]:
        text += (
            f"; {record['overlap_also_in_training']} more it saw are byte-identical to images of "
            "this run's training split (see the leakage audit)"
        )
    return text


def _overlap_reason(record: dict[str, Any], modality: str) -> str:
    seen = sum(record["overlap"].values())
    return (
        f"the pretraining of this encoder saw {seen} of this run's validation/test images "
        f"({_counts(record['overlap'])}; e.g. {', '.join(record['overlap_ids'])}), so their "
        "scores would be optimistic. Pretrain without include_test, with the same data section "
        "and seed as this run (so the splits agree), or set "
        f"model.encoders.{modality}.init_allow_overlap: true to accept it"
    )


def _warn(modality: str, message: str) -> None:
    warnings.warn(f"encoder init {modality!r}: {message}", InitCheckWarning, stacklevel=3)
