"""The training loop: Adam + CE/BCE, schedules, early stopping on a validation metric,
a real copy of the best weights, resumable per-epoch state, rich progress bars."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler

from medmodal.config import TrainConfig
from medmodal.data.dataset import MultimodalDataset, collate
from medmodal.train.losses import class_weights, make_loss, to_probs
from medmodal.train.monitor import monitor_score
from medmodal.utils.runtime import epoch_seed, resolve_device


@dataclass
class TrainState:
    """Everything needed to resume after an interruption."""

    epoch: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    bad_epochs: int = 0


def move(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: move(v, device) for k, v in x.items()}
    return x


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    dataset: MultimodalDataset,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    absent: tuple[str, ...] | list[str] = (),
) -> torch.Tensor:
    """Logits for every sample, in dataset order (eval mode, no augmentation).

    ``absent``: modalities to treat as missing for every sample (test-time removal).
    """
    device = torch.device(device)
    was_train, dataset.train = dataset.train, False
    model.eval()
    out = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for batch in loader:
        present = move(batch["present"], device)
        for m in absent:
            present[m] = torch.zeros_like(present[m])
        out.append(model(move(batch["inputs"], device), present).float().cpu())
    dataset.train = was_train
    return torch.cat(out) if out else torch.zeros(0)


class Trainer:
    """Fit a model on a train dataset, selecting the best epoch on a validation dataset."""

    def __init__(
        self,
        model: nn.Module,
        task: str,
        n_classes: int,
        cfg: TrainConfig,
        seed: int = 0,
        progress: bool | Literal["lines"] = True,
        on_epoch_end: Callable[[TrainState, Trainer], None] | None = None,
        console: Console | None = None,
    ) -> None:
        self.model = model
        self.task = task
        self.n_classes = n_classes
        self.cfg = cfg
        self.seed = seed
        self.progress = progress
        self.on_epoch_end = on_epoch_end
        self.console = console or Console(stderr=True)
        self.device = resolve_device(cfg.device)
        self.model.to(self.device)
        self.optimizer = self._make_optimizer()
        self.scheduler: Any = None
        self.loss_fn: nn.Module | None = None
        self.state = TrainState()

    # -- construction ------------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.model.parameters() if p.requires_grad]
        c = self.cfg
        if c.optimizer == "adam":
            return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
        if c.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        return torch.optim.SGD(
            params, lr=c.lr, momentum=0.9, weight_decay=c.weight_decay, nesterov=True
        )

    def _make_scheduler(self, steps_per_epoch: int) -> Any:
        c = self.cfg
        total = c.epochs * steps_per_epoch
        warm = c.warmup_epochs * steps_per_epoch
        if c.scheduler == "cosine":

            def f(step: int) -> float:
                if step < warm:
                    return (step + 1) / warm
                t = (step - warm) / max(1, total - warm)
                return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

            return torch.optim.lr_scheduler.LambdaLR(self.optimizer, f)
        if c.scheduler == "multistep":
            marks = [int(m * c.epochs) * steps_per_epoch for m in c.milestones]
            return torch.optim.lr_scheduler.MultiStepLR(self.optimizer, marks, gamma=c.gamma)
        if c.scheduler == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode="max", factor=c.gamma, patience=3
            )
        return None

    def _loader(self, ds: MultimodalDataset, epoch: int) -> DataLoader:
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, 1))
        sampler = None
        if self.cfg.sampler == "balanced" and ds.labels is not None and self.task != "multilabel":
            y = np.asarray(ds.labels).astype(int)
            w = 1.0 / np.bincount(y)[y]
            sampler = WeightedRandomSampler(
                torch.as_tensor(w, dtype=torch.double), len(y), generator=g
            )
        return DataLoader(
            ds,
            batch_size=self.cfg.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            generator=g if sampler is None else None,
            collate_fn=collate,
            num_workers=self.cfg.num_workers,
            drop_last=len(ds) > self.cfg.batch_size and len(ds) % self.cfg.batch_size == 1,
        )

    # -- state for checkpoints ------------------------------------------------------------
    def resume_state(self) -> dict[str, Any]:
        s = self.state
        return {
            "epoch": s.epoch,
            "best_score": s.best_score,
            "best_epoch": s.best_epoch,
            "best_state": s.best_state,
            "history": s.history,
            "bad_epochs": s.bad_epochs,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
        }

    def load_resume_state(self, d: dict[str, Any]) -> None:
        self.state = TrainState(
            epoch=int(d["epoch"]),
            best_score=float(d["best_score"]),
            best_epoch=int(d["best_epoch"]),
            best_state=d["best_state"],
            history=list(d["history"]),
            bad_epochs=int(d["bad_epochs"]),
        )
        self.model.load_state_dict(d["model"])
        self.optimizer.load_state_dict(d["optimizer"])
        self._pending_scheduler = d.get("scheduler")

    # -- loop ----------------------------------------------------------------------------
    def fit(self, train_ds: MultimodalDataset, val_ds: MultimodalDataset | None) -> TrainState:
        c = self.cfg
        if train_ds.labels is None:
            raise ValueError("training data has no labels")
        weights = None
        if c.class_weights == "balanced":
            weights = class_weights(np.asarray(train_ds.labels), self.task, self.n_classes)
        self.loss_fn = make_loss(self.task, weights, c.label_smoothing).to(self.device)
        steps = len(self._loader(train_ds, 0))
        self.scheduler = self._make_scheduler(steps)
        pending = getattr(self, "_pending_scheduler", None)
        if pending is not None and self.scheduler is not None:
            self.scheduler.load_state_dict(pending)
            # A fresh scheduler resets the optimizer's lr; put back the lr of the interrupted step.
            for group, lr in zip(
                self.optimizer.param_groups, self.scheduler.get_last_lr(), strict=True
            ):
                group["lr"] = lr
        amp = c.amp and self.device.type in ("cuda", "cpu")
        scaler = torch.amp.GradScaler(enabled=amp and self.device.type == "cuda")
        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
        ]
        with Progress(
            *columns, console=self.console, disable=self.progress is not True, transient=False
        ) as bar:
            for epoch in range(self.state.epoch, c.epochs):
                torch.manual_seed(epoch_seed(self.seed, epoch))
                train_ds.train = True
                train_ds.generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, 2))
                loader = self._loader(train_ds, epoch)
                task_id = bar.add_task(f"epoch {epoch + 1}/{c.epochs}", total=len(loader), info="")
                t0 = time.perf_counter()
                self.model.train()
                total, count = 0.0, 0
                for batch in loader:
                    inputs = move(batch["inputs"], self.device)
                    present = move(batch["present"], self.device)
                    y = batch["label"].to(self.device)
                    with torch.autocast(
                        self.device.type,
                        enabled=amp,
                        dtype=torch.bfloat16 if self.device.type == "cpu" else torch.float16,
                    ):
                        logits = self.model(inputs, present)
                        loss = self.loss_fn(logits.float(), y)
                        loss = loss + self._aux_loss(present, y)
                    self.optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if c.grad_clip:
                        scaler.unscale_(self.optimizer)
                        nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
                    scaler.step(self.optimizer)
                    scaler.update()
                    if self.scheduler is not None and c.scheduler != "plateau":
                        self.scheduler.step()
                    total += float(loss.detach()) * len(y)
                    count += len(y)
                    bar.update(task_id, advance=1, info=f"loss {total / count:.4f}")
                train_ds.train = False
                record: dict[str, Any] = {
                    "epoch": epoch + 1,
                    "train_loss": total / max(count, 1),
                    "lr": self.optimizer.param_groups[0]["lr"],
                }
                if val_ds is not None and len(val_ds):
                    record.update(self.validate(val_ds))
                    score = record[f"val_{c.monitor}"]
                    score = -score if c.monitor == "loss" else score
                    if math.isnan(score):  # e.g. one class only in val: fall back to the loss
                        score = -record["val_loss"]
                else:
                    score = -record["train_loss"]
                if self.scheduler is not None and c.scheduler == "plateau":
                    self.scheduler.step(score)
                record["seconds"] = time.perf_counter() - t0
                improved = score > self.state.best_score
                if improved:
                    self.state.best_score = score
                    self.state.best_epoch = epoch + 1
                    self.state.best_state = copy.deepcopy(self.model.state_dict())
                    self.state.bad_epochs = 0
                else:
                    self.state.bad_epochs += 1
                record["best"] = improved
                self.state.history.append(record)
                self.state.epoch = epoch + 1
                shown = {
                    k: round(v, 4)
                    for k, v in record.items()
                    if k.startswith("val_") and isinstance(v, float)
                }
                bar.update(
                    task_id,
                    info=f"loss {record['train_loss']:.4f} {shown}{' *' if improved else ''}",
                )
                if self.progress == "lines":  # no terminal (a log, CI): one plain line per epoch
                    self.console.print(
                        f"epoch {epoch + 1}/{c.epochs} loss {record['train_loss']:.4f} "
                        + " ".join(f"{k} {v}" for k, v in shown.items())
                        + f" ({record['seconds']:.0f} s){' *best*' if improved else ''}",
                        highlight=False,
                        soft_wrap=True,
                    )
                if self.on_epoch_end is not None:
                    self.on_epoch_end(self.state, self)
                if c.early_stopping is not None and self.state.bad_epochs >= c.early_stopping:
                    self.console.print(
                        f"early stopping after epoch {epoch + 1} (best epoch {self.state.best_epoch})"
                    )
                    break
        if self.state.best_state is not None:
            self.model.load_state_dict(self.state.best_state)
        return self.state

    def _aux_loss(self, present: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor | float:
        """Optional per-modality loss for fusions that keep per-modality logits (late fusion)."""
        w = self.cfg.aux_loss_weight
        fusion = getattr(self.model, "fusion", None)
        per = getattr(fusion, "last_modality_logits", None)
        if not w or not per:
            return 0.0
        # The mask the fusion actually saw (after modality dropout), not the input mask.
        seen = getattr(fusion, "last_present", None) or present
        losses = []
        for m, logits in per.items():
            mask = seen[m]
            if bool(mask.any()):
                losses.append(self.loss_fn(logits[mask].float(), y[mask]))
        return w * torch.stack(losses).mean() if losses else 0.0

    def validate(self, ds: MultimodalDataset) -> dict[str, float]:
        logits = predict_logits(self.model, ds, self.cfg.eval_batch_size, self.device)
        y = torch.as_tensor(np.asarray(ds.labels)).to(logits.device)
        assert self.loss_fn is not None
        loss = float(self.loss_fn.to(logits.device)(logits, y))
        self.loss_fn.to(self.device)
        probs = to_probs(logits, self.task).numpy()
        out = {"val_loss": loss}
        out.update(
            {
                f"val_{k}": v
                for k, v in monitor_score(np.asarray(ds.labels), probs, self.task).items()
            }
        )
        return out
