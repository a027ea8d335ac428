"""The training loop: Adam/AdamW/SGD + CE/BCE, schedules, early stopping on a validation metric,
a real copy of the best weights, resumable per-epoch state, progress bars or one line per epoch.

Validation is scored by the same path as prediction and evaluation: :func:`predict_logits`
and :func:`~medmodal.evaluate.metrics_for` with the run's evaluation spec (its threshold).

Speed options (``train.amp``, ``channels_last``, ``compile``) change how the steps run, not what
they compute; under torchrun the model is wrapped in DistributedDataParallel and every rank
takes its share of each global batch (:mod:`medmodal.train.distributed`).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.utils.data import DataLoader

from medmodal.config import TrainConfig
from medmodal.data.dataset import MultimodalDataset, collate
from medmodal.errors import ConfigError
from medmodal.evaluate.metrics import metrics_for
from medmodal.evaluate.spec import EvalSpec
from medmodal.models.model import MultimodalModel
from medmodal.predictor import predict_logits, to_device, to_probs
from medmodal.survival import SurvivalModel
from medmodal.train import distributed as dist_
from medmodal.train.losses import class_weights, make_loss
from medmodal.utils.runtime import autocast, epoch_seed, resolve_device, to_channels_last

MONITORED = ("auroc", "auprc", "accuracy", "balanced_accuracy", "f1_macro")
SURVIVAL_MONITORED = ("c_index",)
Progressish = bool | Literal["lines"]


@dataclass
class TrainState:
    """Everything needed to resume after an interruption."""

    epoch: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    bad_epochs: int = 0


class Trainer:
    """Fit a model on a train dataset, selecting the best epoch on a validation dataset."""

    def __init__(
        self,
        model: MultimodalModel,
        spec: EvalSpec,
        cfg: TrainConfig,
        *,
        seed: int = 0,
        progress: Progressish = True,
        on_epoch_end: Callable[[TrainState, Trainer], None] | None = None,
        console: Console | None = None,
        survival: SurvivalModel | None = None,
    ) -> None:
        self.model = model
        self.survival = survival
        self.spec = spec  # task, classes and the threshold of the validation metrics
        self.task = spec.task
        self.cfg = cfg
        self.seed = seed
        self.progress = progress
        self.on_epoch_end = on_epoch_end
        self.console = console or Console(stderr=True)
        self.monitor = monitor_for(self.task, cfg)
        self.rank, self.world_size = dist_.world()
        self.device = dist_.local_device(resolve_device(cfg.device))
        self.model.to(self.device)
        speed_up(model, cfg)
        self.optimizer = self._make_optimizer()
        self._run = (
            _Run(model) if self.world_size == 1 else dist_.wrap_ddp(_Run(model), self.device)
        )
        self.scheduler: Any = None
        self.loss_fn: nn.Module | None = None
        self.state = TrainState()
        self._pending_scheduler: dict[str, Any] | None = None
        self._scaler = torch.amp.GradScaler(enabled=False)

    # -- construction ------------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.model.parameters() if p.requires_grad]
        c = self.cfg
        if c.optimizer == "adam":
            return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
        if c.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        return torch.optim.SGD(
            params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, nesterov=True
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
                self.optimizer, mode="max", factor=c.gamma, patience=c.plateau_patience
            )
        if c.scheduler == "onecycle":
            return self._one_cycle(total)
        return None

    def _one_cycle(self, total: int) -> torch.optim.lr_scheduler.OneCycleLR:
        """One cycle over every step of ``train.epochs`` (``train.onecycle``); momentum cycles
        only for optimizers that have one (Adam / AdamW: beta1; SGD: momentum)."""
        o = self.cfg.onecycle
        return torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer,
            max_lr=self.cfg.lr,
            total_steps=max(1, total),
            pct_start=o.pct_start,
            anneal_strategy=o.anneal,
            cycle_momentum=o.cycle_momentum,
            base_momentum=o.base_momentum,
            max_momentum=o.max_momentum,
            div_factor=o.div_factor,
            final_div_factor=o.final_div_factor,
        )

    def loader(self, ds: MultimodalDataset, epoch: int) -> DataLoader:
        """This rank's training batches of ``epoch``: one seeded order of the whole data set
        (shuffled, or drawn by the balanced sampler) in global batches of ``batch_size``, each
        split between the ranks. A last global batch with fewer than two samples per rank is
        dropped (batch norm needs two)."""
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, 1))
        n = len(ds)
        balanced = self.cfg.sampler == "balanced" and self.task not in ("multilabel", "survival")
        if balanced and ds.labels is not None:
            y = np.asarray(ds.labels).astype(int)
            w = torch.as_tensor(1.0 / np.bincount(y)[y], dtype=torch.double)
            order = torch.multinomial(w, n, replacement=True, generator=g)
        else:
            order = torch.randperm(n, generator=g)
        b = self.cfg.batch_size
        last = n % b or b
        drop = n > b and last < 2 * self.world_size
        sampler = dist_.ShardedBatchSampler(order.tolist(), b, self.rank, self.world_size, drop)
        return DataLoader(
            ds,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=self.cfg.num_workers,
            generator=torch.Generator().manual_seed(epoch_seed(self.seed, epoch, 3)),
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
        """Train for ``cfg.epochs`` (or until early stopping); the model ends on its best epoch."""
        if train_ds.labels is None:
            raise ValueError("training data has no labels")
        self._prepare(train_ds)
        with self._bar() as bar:
            for epoch in range(self.state.epoch, self.cfg.epochs):
                t0, c0 = time.perf_counter(), time.process_time()
                record = self._train_epoch(train_ds, epoch, bar)
                record["train_seconds"] = time.perf_counter() - t0  # the training pass alone
                record["train_cpu_seconds"] = time.process_time() - c0  # this process, all threads
                record["samples_per_second"] = record["samples"] / record["train_seconds"]
                record.update(self.validate(val_ds) if val_ds is not None and len(val_ds) else {})
                improved = self._end_epoch(record, time.perf_counter() - t0)
                self._log_epoch(record, improved, bar)
                if self.on_epoch_end is not None:
                    self.on_epoch_end(self.state, self)
                if self._stop_early(epoch):
                    break
        if self.state.best_state is not None:
            self.model.load_state_dict(self.state.best_state)
        return self.state

    def _prepare(self, train_ds: MultimodalDataset) -> None:
        """Loss (with class weights), scheduler, and a resumed scheduler's state."""
        weights = None
        if self.survival is not None:
            c = self.cfg
            if c.class_weights != "none" or c.sampler != "none" or c.label_smoothing:
                raise ConfigError(
                    "train.class_weights, train.sampler and train.label_smoothing are for "
                    "classes; a survival target takes none of them"
                )
            self.loss_fn = self.survival.loss().to(self.device)
        else:
            if self.cfg.class_weights != "none":
                y = np.asarray(train_ds.labels)
                power = 0.5 if self.cfg.class_weights == "sqrt" else 1.0
                weights = class_weights(y, self.task, len(self.spec.classes), power)
            self.loss_fn = make_loss(self.task, weights, self.cfg.label_smoothing).to(self.device)
        # a fresh one-cycle schedule also resets the momentum: keep the interrupted step's
        momenta = [
            {k: g[k] for k in ("betas", "momentum") if k in g} for g in self.optimizer.param_groups
        ]
        self.scheduler = self._make_scheduler(len(self.loader(train_ds, 0)))
        cuda_amp = self.cfg.amp and self.device.type == "cuda"
        self._scaler = torch.amp.GradScaler(enabled=cuda_amp)  # fp16 on CUDA; bf16 needs none
        if self._pending_scheduler is not None and self.scheduler is not None:
            self.scheduler.load_state_dict(self._pending_scheduler)
            # A fresh scheduler resets the optimizer's lr; put back the lr of the interrupted step.
            lrs = self.scheduler.get_last_lr()
            for group, lr, kept in zip(self.optimizer.param_groups, lrs, momenta, strict=True):
                group["lr"] = lr
                group.update(kept)

    def _train_epoch(self, ds: MultimodalDataset, epoch: int, bar: Progress) -> dict[str, Any]:
        """One pass over the training batches; returns the epoch's record so far."""
        torch.manual_seed(epoch_seed(self.seed, epoch))
        ds.train = True
        ds.generator = torch.Generator().manual_seed(
            epoch_seed(self.seed, epoch, 2 + 7 * self.rank)
        )
        loader = self.loader(ds, epoch)
        task_id = bar.add_task(f"epoch {epoch + 1}/{self.cfg.epochs}", total=len(loader), info="")
        self.model.train()
        lr = self.optimizer.param_groups[0]["lr"]  # the lr this epoch starts with
        total, count = 0.0, 0
        for batch in loader:
            loss = self._step(batch)
            total += loss * len(batch["label"])
            count += len(batch["label"])
            bar.update(task_id, advance=1, info=f"loss {total / count:.4f}")
        ds.train = False
        total, count = dist_.reduce_sum([total, count])
        dist_.sync_buffers(self.model)  # batch-norm statistics of rank 0 on every rank
        return {
            "epoch": epoch + 1,
            "train_loss": total / max(count, 1),
            "lr": lr,
            "samples": int(count),
        }

    def _step(self, batch: dict[str, Any]) -> float:
        """Forward, loss (+ the fusion's auxiliary loss), backward, optimizer and LR step."""
        c, device = self.cfg, self.device
        y = batch["label"].to(device)
        with autocast(device, c.amp):
            out = self._run(to_device(batch["inputs"], device), to_device(batch["present"], device))
            assert self.loss_fn is not None
            loss = self.loss_fn(out.logits.float(), y)
            aux = self.model.fusion.auxiliary_loss(out.fusion, y, self.loss_fn)
            if aux is not None and c.aux_loss_weight:
                loss = loss + c.aux_loss_weight * aux
        self.optimizer.zero_grad(set_to_none=True)
        self._backward_and_step(loss)
        if self.scheduler is not None and c.scheduler != "plateau":
            self.scheduler.step()
        return float(loss.detach())

    def _backward_and_step(self, loss: torch.Tensor) -> None:
        scaler = self._scaler
        scaler.scale(loss).backward()
        if self.cfg.grad_clip:
            scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        scaler.step(self.optimizer)
        scaler.update()

    def _end_epoch(self, record: dict[str, Any], seconds: float) -> bool:
        """Score the epoch, step a plateau schedule, keep a copy of the best weights."""
        key = self.monitor
        if f"val_{key}" in record:
            value = record[f"val_{key}"]
            score = -value if key == "loss" else value
            if score is None or math.isnan(score):  # e.g. one class only in val: use the loss
                score = -record["val_loss"]
        else:
            score = -record["train_loss"]
        if self.scheduler is not None and self.cfg.scheduler == "plateau":
            self.scheduler.step(score)
        record["seconds"] = seconds
        improved = score > self.state.best_score
        s = self.state
        if improved:
            s.best_score, s.best_epoch, s.bad_epochs = score, record["epoch"], 0
            s.best_state = copy.deepcopy(self.model.state_dict())
        else:
            s.bad_epochs += 1
        record["best"] = improved
        s.history.append(record)
        s.epoch = record["epoch"]
        return improved

    def _stop_early(self, epoch: int) -> bool:
        patience = self.cfg.early_stopping
        if patience is None or self.state.bad_epochs < patience:
            return False
        if self.rank == 0:
            self.console.print(
                f"early stopping after epoch {epoch + 1} (best epoch {self.state.best_epoch})"
            )
        return True

    @contextmanager
    def _bar(self) -> Iterator[Progress]:
        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
        ]
        off = self.progress is not True or self.rank != 0
        with Progress(*columns, console=self.console, disable=off) as bar:
            yield bar

    def _log_epoch(self, record: dict[str, Any], improved: bool, bar: Progress) -> None:
        shown = {
            k: round(v, 4)
            for k, v in record.items()
            if k.startswith("val_") and isinstance(v, float)
        }
        star = " *" if improved else ""
        bar.update(bar.task_ids[-1], info=f"loss {record['train_loss']:.4f} {shown}{star}")
        # no terminal (a log, CI): one plain line per epoch, from rank 0 only
        if self.progress == "lines" and self.rank == 0:
            self.console.print(
                f"epoch {record['epoch']}/{self.cfg.epochs} loss {record['train_loss']:.4f} "
                + " ".join(f"{k} {v}" for k, v in shown.items())
                + f" ({record['seconds']:.0f} s){' *best*' if improved else ''}",
                highlight=False,
                soft_wrap=True,
            )

    def validate(self, ds: MultimodalDataset) -> dict[str, float | None]:
        """Validation loss and the monitored metrics, through the prediction path (split between
        the ranks and gathered, so every rank scores the same)."""
        mine = list(range(self.rank, len(ds), self.world_size))
        bs = self.cfg.eval_batch_size
        logits = predict_logits(self.model, ds, bs, self.device, indices=mine)
        logits = dist_.gather_rows(logits, mine, len(ds))
        y = np.asarray(ds.labels)
        assert self.loss_fn is not None
        loss_fn = copy.deepcopy(self.loss_fn).cpu()
        loss = float(loss_fn(logits, torch.as_tensor(y)))
        if self.survival is not None:
            m = metrics_for(y, self.survival.risk(logits), self.spec)
            return {"val_loss": loss, **{f"val_{k}": m[k] for k in SURVIVAL_MONITORED}}
        probs = to_probs(logits, self.task).numpy()
        m = metrics_for(y, probs, self.spec)
        return {"val_loss": loss, **{f"val_{k}": m[k] for k in MONITORED}}


def monitor_for(task: str, cfg: TrainConfig) -> str:
    """The validation metric that picks the best epoch. Survival: ``c_index`` (Harrell's C; the
    default ``auroc`` means it) or ``loss``; classification metrics are a ConfigError there."""
    if task != "survival":
        if cfg.monitor == "c_index":
            raise ConfigError("train.monitor c_index is for survival targets")
        return cfg.monitor
    if cfg.monitor in ("auroc", "c_index"):
        return "c_index"
    if cfg.monitor == "loss":
        return "loss"
    raise ConfigError(
        f"train.monitor {cfg.monitor!r} has no meaning for a survival target; use c_index or loss"
    )


class _Run(nn.Module):
    """``model.run`` as a module's forward, so DistributedDataParallel can wrap it."""

    def __init__(self, model: MultimodalModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: dict[str, Any], present: dict[str, torch.Tensor]) -> Any:
        return self.model.run(inputs, present)


def speed_up(model: MultimodalModel, cfg: TrainConfig) -> None:
    """``channels_last``: convolution weights of the encoders in channels-last order (2D) or
    its 3D counterpart; ``compile``: each encoder compiled in place (its parameter names, and
    so checkpoints, unchanged)."""
    for encoder in model.encoders.values():
        if cfg.channels_last:
            to_channels_last(encoder)
        if cfg.compile:
            encoder.compile()
