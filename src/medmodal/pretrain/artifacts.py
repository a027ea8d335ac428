"""What pretraining writes: the encoder checkpoint, reconstruction grids and the loss curve."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medmodal.checkpoint import save_checkpoint
from medmodal.run.pretrained import KIND  # a medmodal checkpoint of this kind holds one encoder
from medmodal.utils.io import dump_json


@dataclass(frozen=True)
class PretrainRecord:
    """How pretrained weights were made: the pretraining config and loss history, the images used
    (counts, splits, content keys: what a run starting from them checks its validation and test
    images against) and the image normalisation (processor state) fitted on them."""

    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    images: dict[str, Any] = field(default_factory=dict)
    processor: dict[str, Any] = field(default_factory=dict)


def save_encoder(
    path: Path,
    encoder: torch.nn.Module,
    *,
    name: str,
    options: dict[str, Any],
    info: dict[str, Any],
    record: PretrainRecord,
) -> Path:
    """The encoder's weights (``encoder_state``, names as in a classifier's encoder) with the
    encoder's name and options, its input info and how the weights were made (``record``).
    ``model.encoders.<modality>.init`` loads it; ``torch.load(weights_only=True)`` reads it."""
    return save_checkpoint(
        path,
        {
            "kind": KIND,
            "encoder": {"name": name, "options": options},
            "info": info,
            "encoder_state": encoder.state_dict(),
            "pretrain_config": record.config,
            "history": record.history,
            "images": record.images,
            "processor": record.processor,
        },
    )


def _display(x: torch.Tensor) -> np.ndarray:
    """(C, *size) -> a 2D (H, W) or (H, W, 3) array; 3D volumes show their middle slice."""
    if x.ndim == 4:
        x = x[:, x.shape[1] // 2]
    a = x.numpy()
    return a[0] if a.shape[0] == 1 else np.moveaxis(a[:3], 0, -1)


def _scale(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1)


def preview_grid(path: Path, shown: dict[str, torch.Tensor], epoch: int) -> Path:
    """Rows: input as the encoder sees it (hidden patches grey), mask (white = hidden),
    reconstruction (visible pixels + predicted hidden ones), original."""
    image, hidden, recon = shown["image"], shown["hidden"], shown["recon"]
    n = image.shape[0]
    fig = Figure(figsize=(1.3 * n + 1.2, 5.6))
    FigureCanvasAgg(fig)
    rows = ("input", "mask", "reconstruction", "original")
    axes = fig.subplots(4, n, squeeze=False)
    for j in range(n):
        orig = _display(image[j])
        lo, hi = float(orig.min()), float(orig.max())
        h = _display(hidden[j].expand_as(image[j]))
        tiles = (
            np.where(h > 0, 0.5, _scale(orig, lo, hi)),
            h,
            _scale(np.where(h > 0, _display(recon[j]), orig), lo, hi),
            _scale(orig, lo, hi),
        )
        for i, tile in enumerate(tiles):
            ax = axes[i][j]
            ax.imshow(tile, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(rows[i], fontsize=8)
    fig.suptitle(f"masked-image reconstruction after epoch {epoch}", fontsize=9)
    fig.savefig(path, dpi=100)
    return path


def loss_curve(out: Path, history: list[dict[str, Any]]) -> tuple[Path, Path]:
    """``loss.json`` (the history) and ``loss.png`` (training and fixed-set loss per epoch)."""
    js = dump_json(out / "loss.json", history)
    fig = Figure(figsize=(5, 3.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    train = [(r["epoch"], r["loss"]) for r in history if "loss" in r]
    held = [(r["epoch"], r["eval_loss"]) for r in history if r.get("eval_loss") is not None]
    if train:
        ax.plot(*zip(*train, strict=True), label="training batches (masked L1)")
    if held:
        ax.plot(*zip(*held, strict=True), marker=".", label="fixed images and masks")
    ax.set_xlabel("epoch")
    ax.set_ylabel("L1 on hidden pixels")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = out / "loss.png"
    fig.savefig(png, dpi=100)
    return js, png
