"""One pretraining run: config -> images -> masked-image model -> loop -> encoder checkpoint.

Writes into the run folder: ``encoder.pt`` (what ``model.encoders.<modality>.init`` takes),
``last.pt`` (resume state after every epoch), ``loss.json`` / ``loss.png``, ``preview_epoch_<n>.png``,
``images.json`` (which images were used) and ``config.yaml``. ``encoder.pt`` records the content key
of every image trained on, which a classifier run starting from it checks its validation and test
images against (:mod:`medmodal.run.pretrained`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from medmodal.checkpoint import read_checkpoint, save_checkpoint
from medmodal.errors import ConfigError
from medmodal.models.init import init_encoder
from medmodal.pretrain.artifacts import PretrainRecord, loss_curve, preview_grid, save_encoder
from medmodal.pretrain.config import ConfigSource, PretrainConfig, load_pretrain_config
from medmodal.pretrain.data import ImageSource, ImageView, load_source
from medmodal.pretrain.loop import PretrainLoop, ProgressMode
from medmodal.pretrain.model import build_simmim
from medmodal.run.pretrained import KEY_SCHEME, read_record, unrecorded_inits
from medmodal.utils.io import dump_json
from medmodal.utils.runtime import seed_everything, set_threads

STATE = "pretrain-state"  # the kind of checkpoint ``last.pt`` is


@dataclass
class PretrainResult:
    """Where a pretraining run wrote, its loss history (epoch 0 = before training) and timing."""

    run_dir: Path
    checkpoint: Path
    history: list[dict[str, Any]]
    images: int
    seconds: float
    previews: list[Path] = field(default_factory=list)

    @property
    def eval_loss_before(self) -> float:
        return float(self.history[0]["eval_loss"])

    @property
    def eval_loss_after(self) -> float:
        return float(self.history[-1]["eval_loss"])


def read_sources(cfg: PretrainConfig, run_dir: Path, progress: bool = False) -> list[ImageSource]:
    """The main data source, then each ``extra_data`` source at the main one's size."""
    common = {"seed": cfg.seed, "include_test": cfg.include_test, "progress": progress}
    main = load_source(cfg.data, work=run_dir, modality=cfg.modality, **common)
    out = [main]
    for k, extra in enumerate(cfg.extra_data):
        modality = extra.modalities[0] if extra.modalities else None  # else the only image one
        work = run_dir / f"extra_{k}"
        out.append(load_source(extra, work=work, modality=modality, like=main.info, **common))
    return out


def pretrain(
    config: ConfigSource,
    overrides: list[str] | None = None,
    *,
    progress: ProgressMode = False,
    resume: bool = False,
    console: Console | None = None,
) -> PretrainResult:
    """Pretrain ``config.encoder`` by masked-image modelling on the configured images."""
    t0 = time.perf_counter()
    cfg = load_pretrain_config(config, overrides)
    seed_everything(cfg.seed)
    set_threads(cfg.train.threads)
    run_dir = Path(cfg.output_dir or Path("runs") / cfg.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    sources = read_sources(cfg, run_dir, progress is True)
    view = ImageView(sources, cfg.train.max_images, cfg.seed)
    model, masks = _model(cfg, sources[0])
    loop = PretrainLoop(model, masks, view, cfg.train, cfg.seed, progress=progress, console=console)
    images = _images_record(sources, view)
    content = _content_record(cfg, view)
    dump_json(run_dir / "images.json", images)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    last = run_dir / "last.pt"
    if resume and last.is_file():
        _resume(loop, last, cfg, images["sample_ids_sha256"])
    previews: list[Path] = []
    history = loop.fit(_epoch_writer(cfg, loop, run_dir, images["sample_ids_sha256"], previews))
    ckpt = save_encoder(
        run_dir / "encoder.pt",
        model.encoder,
        name=cfg.encoder.name,
        options=cfg.encoder_options(),
        info=sources[0].info,
        record=PretrainRecord(
            config=cfg.to_dict(),
            history=history,
            images={**_without_ids(images), **content},
            processor=sources[0].dataset.processors[sources[0].modality].state_dict(),
        ),
    )
    loss_curve(run_dir, history)
    return PretrainResult(run_dir, ckpt, history, len(view), time.perf_counter() - t0, previews)


def _model(cfg: PretrainConfig, main: ImageSource) -> tuple[Any, Any]:
    """The masked-image model for the main source's images (+ ``encoder.init`` weights)."""
    model, masks = build_simmim(
        cfg.encoder.name,
        cfg.encoder_options(),
        main.info,
        cfg.mask.patch_size,
        cfg.mask.ratio,
        cfg.decoder_width,
    )
    if cfg.encoder.init:
        init_encoder(model.encoder, cfg.encoder.init, main.modality)
    return model, masks


def _epoch_writer(
    cfg: PretrainConfig, loop: PretrainLoop, run_dir: Path, digest: str, previews: list[Path]
) -> Callable[[dict[str, Any]], None]:
    """After each epoch: the preview grid (chosen epochs), the loss curve and ``last.pt``."""
    wanted = set(cfg.preview.epochs or [1, cfg.train.epochs])
    shown = loop.eval_index[: cfg.preview.images]

    def end_epoch(record: dict[str, Any]) -> None:
        if record["epoch"] in wanted:
            path = run_dir / f"preview_epoch_{record['epoch']:03d}.png"
            previews.append(preview_grid(path, loop.reconstruct(shown), record["epoch"]))
        loss_curve(run_dir, loop.history)
        body = {"kind": STATE, "config": cfg.to_dict(), "images_sha256": digest}
        save_checkpoint(run_dir / "last.pt", {**body, "state": loop.state_dict()})

    return end_epoch


def _images_record(sources: list[ImageSource], view: ImageView) -> dict[str, Any]:
    used = view.sample_ids()
    digest = hashlib.sha256(json.dumps([[s.source for s in sources], used]).encode()).hexdigest()
    return {
        "images": len(view),
        "sample_ids_sha256": digest,
        "sources": [s.summary(ids) for s, ids in zip(sources, used, strict=True)],
    }


def _content_record(cfg: PretrainConfig, view: ImageView) -> dict[str, Any]:
    """The content keys of the images trained on, with those the ``encoder.init`` checkpoint's own
    pretraining recorded (one it cannot tell about is listed under ``unrecorded_inits``)."""
    keys = view.content_keys()
    record: dict[str, Any] = {"key_scheme": KEY_SCHEME, "unrecorded_inits": []}
    if cfg.encoder.init:
        pretrained, inherited = read_record(cfg.encoder.init)
        if pretrained and inherited is None:
            record["unrecorded_inits"] = [str(cfg.encoder.init)]
        else:
            keys |= inherited or set()
            record["unrecorded_inits"] = unrecorded_inits(cfg.encoder.init)
    return {**record, "content_keys": sorted(keys)}


def _without_ids(images: dict[str, Any]) -> dict[str, Any]:
    """The images record without the id lists (they stay in images.json; the digest covers them)."""
    sources = [{k: v for k, v in s.items() if k != "sample_ids"} for s in images["sources"]]
    return {**images, "sources": sources}


def _resume(loop: PretrainLoop, last: Path, cfg: PretrainConfig, digest: str) -> None:
    """Continue after the last finished epoch; refused when the config or the images changed."""
    body = read_checkpoint(last)
    if body.get("kind") != STATE:
        raise ConfigError(f"cannot resume from {last}: not a pretraining state file")
    old = body.get("config") or {}
    changed = sorted(k for k in set(old) | set(cfg.to_dict()) if old.get(k) != cfg.to_dict().get(k))
    if changed:
        raise ConfigError(f"cannot resume from {last}: the config changed since ({changed})")
    if body.get("images_sha256") != digest:
        raise ConfigError(f"cannot resume from {last}: the images changed since it was written")
    loop.load_state_dict(body["state"])
    loop.console.print(f"resuming from {last} after epoch {loop.epoch}")
