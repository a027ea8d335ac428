"""The pretraining loop: AdamW, linear warm-up then cosine (per step), seeded per epoch (data
order, augmentation, masks), resumable from its state after any epoch, progress with loss and
images/s (one plain line per epoch without a terminal).

The held-out check: before training and after every epoch, the reconstruction loss of a fixed
set of pretraining images under fixed masks (eval mode, no augmentation), so epochs compare.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.utils.data import DataLoader

from medmodal.pretrain.config import PretrainTrain
from medmodal.pretrain.data import ImageView
from medmodal.pretrain.loss import masked_l1
from medmodal.pretrain.masks import MaskGenerator
from medmodal.utils.runtime import epoch_seed, resolve_device

ProgressMode = bool | Literal["lines"]
EVAL_IMAGES = 256
NO_DECAY = ("position_embeddings", "relative_position_bias_table", "mask_token")


class PretrainLoop:
    """Train ``model`` (a masked-image model) on ``images`` with masks from ``masks``."""

    def __init__(
        self,
        model: nn.Module,
        masks: MaskGenerator,
        images: ImageView,
        cfg: PretrainTrain,
        seed: int,
        *,
        progress: ProgressMode = False,
        console: Console | None = None,
    ) -> None:
        self.model, self.masks, self.images, self.cfg, self.seed = model, masks, images, cfg, seed
        self.progress = progress
        self.console = console or Console(stderr=True)
        self.device = resolve_device(cfg.device)
        self.model.to(self.device)
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
        steps = len(self.loader(0))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(cfg.epochs * steps, cfg.warmup_epochs * steps)
        )
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        g = torch.Generator().manual_seed(epoch_seed(seed, 0, 4))
        order = torch.randperm(len(images), generator=g)[:EVAL_IMAGES].tolist()
        self.eval_index = order
        self.eval_masks = masks(len(order), torch.Generator().manual_seed(epoch_seed(seed, 0, 5)))

    def loader(self, epoch: int) -> DataLoader:
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, 1))
        n, bs = len(self.images), self.cfg.batch_size
        return DataLoader(
            self.images, batch_size=bs, shuffle=True, generator=g, drop_last=n > bs and n % bs == 1
        )

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "history": self.history,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    # -- loop ----------------------------------------------------------------------------
    def fit(self, on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> list[dict]:
        """Run the remaining epochs; ``on_epoch_end(record)`` after each (saving, previews)."""
        if not self.history:
            self.history.append({"epoch": 0, "eval_loss": self.eval_loss()})
        with self._bar() as bar:
            for epoch in range(self.epoch, self.cfg.epochs):
                record = self._train_epoch(epoch, bar)
                record["eval_loss"] = self.eval_loss()
                self.history.append(record)
                self.epoch = epoch + 1
                self._log(record, bar)
                if on_epoch_end is not None:
                    on_epoch_end(record)
        return self.history

    def _train_epoch(self, epoch: int, bar: Progress) -> dict[str, Any]:
        torch.manual_seed(epoch_seed(self.seed, epoch))
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, 3))
        self.images.set_epoch(True, self.seed, epoch)
        loader = self.loader(epoch)
        task = bar.add_task(f"epoch {epoch + 1}/{self.cfg.epochs}", total=len(loader), info="")
        self.model.train()
        lr = self.optimizer.param_groups[0]["lr"]
        total, count, t0 = 0.0, 0, time.perf_counter()
        for x in loader:
            loss = self._step(x.to(self.device), self.masks(len(x), g).to(self.device))
            total, count = total + loss * len(x), count + len(x)
            rate = count / max(time.perf_counter() - t0, 1e-9)
            bar.update(task, advance=1, info=f"loss {total / count:.4f}  {rate:.0f} img/s")
        self.images.set_epoch(False, self.seed, epoch)
        seconds = time.perf_counter() - t0
        return {
            "epoch": epoch + 1,
            "loss": total / max(count, 1),
            "lr": lr,
            "seconds": seconds,
            "images_per_s": count / max(seconds, 1e-9),
        }

    def _step(self, x: torch.Tensor, mask: torch.Tensor) -> float:
        loss = masked_l1(self.model(x, mask), x, self.model.hidden_pixels(mask))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach())

    @torch.no_grad()
    def eval_loss(self) -> float:
        """Reconstruction loss on the fixed evaluation images and masks (eval mode)."""
        self.model.eval()
        self.images.set_epoch(False, self.seed, 0)
        total, n = 0.0, 0
        for start in range(0, len(self.eval_index), self.cfg.batch_size):
            idx = self.eval_index[start : start + self.cfg.batch_size]
            x = torch.stack([self.images[i] for i in idx]).to(self.device)
            mask = self.eval_masks[start : start + len(idx)].to(self.device)
            loss = masked_l1(self.model(x, mask), x, self.model.hidden_pixels(mask))
            total, n = total + float(loss) * len(idx), n + len(idx)
        return total / max(n, 1)

    def reconstruct(self, index: list[int]) -> dict[str, torch.Tensor]:
        """Images, masks and reconstructions of ``index`` (the first evaluation masks), on CPU."""
        self.model.eval()
        with torch.no_grad():
            x = torch.stack([self.images[i] for i in index]).to(self.device)
            mask = self.eval_masks[: len(index)].to(self.device)
            recon = self.model(x, mask)
            hidden = self.model.hidden_pixels(mask)
        return {"image": x.cpu(), "hidden": hidden.cpu(), "recon": recon.float().cpu()}

    @contextmanager
    def _bar(self) -> Iterator[Progress]:
        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
        ]
        with Progress(*columns, console=self.console, disable=self.progress is not True) as bar:
            yield bar

    def _log(self, r: dict[str, Any], bar: Progress) -> None:
        line = (
            f"epoch {r['epoch']}/{self.cfg.epochs} loss {r['loss']:.4f} eval_loss "
            f"{r['eval_loss']:.4f} lr {r['lr']:.2e} {r['images_per_s']:.0f} img/s "
            f"({r['seconds']:.0f} s)"
        )
        if self.progress is True:
            bar.update(bar.task_ids[-1], info=line.split(" ", 2)[2])
        elif self.progress == "lines":
            self.console.print(line, highlight=False, soft_wrap=True)


def warmup_cosine(total: int, warm: int) -> Callable[[int], float]:
    """LR factor per step: linear warm-up over ``warm`` steps, then cosine to 0 at ``total``."""

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms, position embeddings (a Swin's relative
    position bias tables too) and mask tokens, as in SimMIM."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or any(k in name for k in NO_DECAY)
        (no_decay if skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
