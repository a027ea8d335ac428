"""The training options the README lists, through ``api.fit`` on small SYNTHETIC tables
(mechanics, not results): the best-epoch checkpoint, early stopping, schedules, optimizers,
class weights, the balanced sampler, bf16 autocast, device choice, and resume on changed data.

Most runs use ``flip_val``: the validation labels are inverted, so every epoch of training makes
validation worse and the best epoch (on validation loss) is known to be the first.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import interrupt_fit, synthetic_table, table_config

from medmodal import api
from medmodal.errors import ConfigError

SPLIT = (0.5, 0.25, 0.25)


def _fit(cfg: dict[str, Any]) -> api.RunResult:
    return api.fit(cfg, progress=False)


def _flipped(tmp_path: Path, name: str, **train: Any) -> dict[str, Any]:
    frame = synthetic_table(240, noise=0.2, split=SPLIT, flip_val=True)
    return table_config(frame, tmp_path / name, train={"monitor": "loss", **train})


def _model_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model_state"]


def _optimizer_state(run: api.RunResult) -> dict[str, Any]:
    """The optimizer's state dict saved in ``last.pt`` (the one place that knows its layout)."""
    return torch.load(run.run_dir / "last.pt", weights_only=True)["resume"]["optimizer"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- best epoch, early stopping --------------------------------------------------------------
def test_best_checkpoint_holds_the_best_epoch_not_the_last(tmp_path: Path) -> None:
    run = _fit(_flipped(tmp_path, "four", epochs=4))
    history = json.loads((run.run_dir / "history.json").read_text())
    losses = [h["val_loss"] for h in history]
    assert run.metrics["epochs_run"] == 4 and run.metrics["best_epoch"] == 1, losses
    assert losses == sorted(losses)  # every epoch worse on validation than the one before
    assert [h["best"] for h in history] == [True, False, False, False]
    best = _model_state(run.checkpoint)
    assert not _same(best, _model_state(run.run_dir / "last.pt"))
    # the same seed trained for exactly the best epoch ends with best.pt's weights
    one = _fit(_flipped(tmp_path, "one", epochs=1))
    assert _same(best, _model_state(one.run_dir / "last.pt"))


def test_early_stopping_stops_patience_epochs_after_the_best(tmp_path: Path) -> None:
    run = _fit(_flipped(tmp_path, "es", epochs=12, early_stopping=3))
    assert run.metrics["best_epoch"] == 1
    assert run.metrics["epochs_run"] == 1 + 3 == len(run.history)
    patient = _fit(_flipped(tmp_path, "off", epochs=6))
    assert patient.metrics["epochs_run"] == 6  # without early stopping every epoch runs


# -- schedules: the lr each epoch trained with, as history.json records it ---------------------
def test_multistep_lr_in_history_follows_the_milestones(tmp_path: Path) -> None:
    train = {"epochs": 4, "lr": 0.01, "scheduler": "multistep", "milestones": [0.5, 0.75]}
    cfg = table_config(synthetic_table(240, split=SPLIT), tmp_path / "ms", train=train)
    lrs = [h["lr"] for h in _fit(cfg).history]
    assert lrs == pytest.approx([0.01, 0.01, 0.001, 0.0001])


def test_plateau_lowers_the_lr_after_patience_epochs_without_gain(tmp_path: Path) -> None:
    run = _fit(_flipped(tmp_path, "plateau", epochs=7, lr=0.01, scheduler="plateau", gamma=0.5))
    # validation never improves after epoch 1; the default patience is 3 epochs, so epochs 2-5
    # are bad and the lr halves after epoch 5 (ReduceLROnPlateau: more than `patience` bad epochs)
    assert [h["best"] for h in run.history] == [True] + [False] * 6
    assert [h["lr"] for h in run.history] == pytest.approx([0.01] * 5 + [0.005] * 2)


def test_cosine_lr_decays_towards_zero(tmp_path: Path) -> None:
    train = {"epochs": 6, "lr": 0.01, "scheduler": "cosine"}
    cfg = table_config(synthetic_table(240, split=SPLIT), tmp_path / "cos", train=train)
    lrs = [h["lr"] for h in _fit(cfg).history]
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False)) and lrs[0] <= 0.01
    assert 0 <= lrs[-1] < 0.001  # the last epoch trains at (or ends with) under a tenth


def test_onecycle_lr_rises_to_lr_then_anneals_and_cycles_beta1(tmp_path: Path) -> None:
    """The lr each epoch starts with follows torch's OneCycleLR over every step (warm-up over
    ``pct_start``, from lr / div_factor to lr, then cosine down); Adam's beta1 moves the other
    way and is back at max_momentum at the end."""
    onecycle = {"pct_start": 0.5, "div_factor": 10.0, "final_div_factor": 100.0}
    train = {"epochs": 6, "lr": 0.01, "optimizer": "adamw", "scheduler": "onecycle",
             "onecycle": onecycle}  # fmt: skip
    run = _fit(table_config(synthetic_table(240, split=SPLIT), tmp_path / "oc", train=train))
    steps = math.ceil(run.metrics["n"]["train"] / 32)
    ref = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        ref, max_lr=0.01, total_steps=6 * steps, pct_start=0.5, div_factor=10.0,
        final_div_factor=100.0, base_momentum=0.85, max_momentum=0.95,
    )  # fmt: skip
    want = []
    for _ in range(6):
        want.append(ref.param_groups[0]["lr"])
        for _ in range(steps):
            ref.step()
            sched.step()
    lrs = [h["lr"] for h in run.history]
    assert lrs == pytest.approx(want) and lrs[0] == pytest.approx(0.001)
    assert max(lrs) > 0.008 and lrs.index(max(lrs)) == 3 and lrs[-1] < lrs[2]
    (group,) = _optimizer_state(run)["param_groups"]
    final = ref.param_groups[0]
    assert group["lr"] == pytest.approx(final["lr"]) and final["lr"] < lrs[0] / 5
    assert group["betas"][0] == pytest.approx(final["betas"][0]) and final["betas"][0] > 0.94


def test_onecycle_resumed_run_matches_uninterrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted mid-cycle and resumed: the same losses (lr and beta1 restored)."""
    train = {"epochs": 4, "lr": 0.01, "optimizer": "adamw", "scheduler": "onecycle"}
    frame = synthetic_table(240, split=SPLIT)
    full = _fit(table_config(frame, tmp_path / "full", train=train))
    cfg = table_config(frame, tmp_path / "cut", train=train)
    interrupt_fit(monkeypatch, lambda: _fit(cfg))  # in the third epoch
    resumed = api.fit(cfg, progress=False, resume=True)
    assert [h["train_loss"] for h in resumed.history] == pytest.approx(
        [h["train_loss"] for h in full.history], rel=1e-6
    )
    assert [h["lr"] for h in resumed.history] == pytest.approx([h["lr"] for h in full.history])


# -- optimizers --------------------------------------------------------------------------------
def test_sgd_keeps_nesterov_momentum_and_adam_its_moments(tmp_path: Path) -> None:
    frame = synthetic_table(120)
    sgd = _optimizer_state(_fit(table_config(frame, tmp_path / "sgd", train={"optimizer": "sgd"})))
    (group,) = sgd["param_groups"]
    assert group["momentum"] == 0.9 and group["nesterov"] is True
    assert sgd["state"] and all("momentum_buffer" in s for s in sgd["state"].values())
    adam = _optimizer_state(
        _fit(table_config(frame, tmp_path / "adam", train={"optimizer": "adam"}))
    )
    assert adam["state"] and all(
        {"exp_avg", "exp_avg_sq"} <= set(s) for s in adam["state"].values()
    )
    assert not any("momentum_buffer" in s for s in adam["state"].values())


def _first_layer(run: api.RunResult) -> torch.Tensor:
    """The first Linear weight of the record MLP after the last step: (hidden, features)."""
    state = _model_state(run.run_dir / "last.pt")
    return next(v for k, v in state.items() if k.startswith("encoders.record.") and v.ndim == 2)


def test_adamw_decays_weights_that_get_no_gradient(tmp_path: Path) -> None:
    """The constant column is 0 after scaling, so its first-layer weights get a zero gradient:
    AdamW shrinks them by (1 - lr * wd) per step (decoupled), Adam's L2 term does not."""
    frame = synthetic_table(120)

    def fit(name: str, optimizer: str, wd: float) -> api.RunResult:
        train = {"optimizer": optimizer, "weight_decay": wd, "lr": 0.01}
        return _fit(table_config(frame, tmp_path / name, train=train))

    free, adamw, adam = (
        fit("free", "adamw", 0.0),
        fit("adamw", "adamw", 1.0),
        fit("adam", "adam", 1.0),
    )
    (steps,) = {int(s["step"]) for s in _optimizer_state(adamw)["state"].values()}
    assert steps == 3 * math.ceil(adamw.metrics["n"]["train"] / 32)  # 3 epochs of batches of 32
    factor = (1 - 0.01 * 1.0) ** steps
    w0, wd, l2 = _first_layer(free), _first_layer(adamw), _first_layer(adam)

    def decayed(w: torch.Tensor) -> list[int]:
        return [
            j for j in range(w0.shape[1]) if torch.allclose(w[:, j], w0[:, j] * factor, rtol=1e-4)
        ]

    assert decayed(wd) == [2]  # "const" is the third feature
    assert decayed(l2) == []


# -- class imbalance: weights and the balanced sampler --------------------------------------------
def _class_weights(labels: np.ndarray, task: str, n_classes: int) -> torch.Tensor:
    """The loss weights 'balanced' gives (the one place that knows where they are computed)."""
    from medmodal.train.losses import class_weights

    return class_weights(labels, task, n_classes)


def test_balanced_class_weights_are_inverse_frequencies() -> None:
    binary = np.array([0] * 90 + [1] * 10)
    assert _class_weights(binary, "binary", 2).tolist() == pytest.approx([90 / 10])
    multi = np.array([0] * 60 + [1] * 30 + [2] * 10)
    want = [100 / (3 * 60), 100 / (3 * 30), 100 / (3 * 10)]  # n / (k * n_c)
    assert _class_weights(multi, "multiclass", 3).tolist() == pytest.approx(want)


def test_sqrt_class_weights_are_the_square_root_and_reach_the_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medmodal.train import trainer as trainer_module
    from medmodal.train.losses import class_weights, make_loss

    multi = np.array([0] * 60 + [1] * 30 + [2] * 10)
    want = [(100 / (3 * n)) ** 0.5 for n in (60, 30, 10)]
    assert class_weights(multi, "multiclass", 3, 0.5).tolist() == pytest.approx(want)
    frame = synthetic_table(200, prevalence=0.1, noise=1.0, split=(0.6, 0.2, 0.2))
    seen: list[Any] = []

    def spy(task: str, weights: Any = None, smoothing: float = 0.0) -> Any:
        seen.append(weights)
        return make_loss(task, weights, smoothing)

    monkeypatch.setattr(trainer_module, "make_loss", spy)
    cfg = table_config(frame, tmp_path / "sqrt", train={"class_weights": "sqrt", "epochs": 1})
    _fit(cfg)
    y = (frame[frame["split"] == "train"]["label"] == "pos").to_numpy()  # the training rows
    want = ((~y).sum() / y.sum()) ** 0.5
    assert seen and seen[0].tolist() == pytest.approx([want])


def test_class_weights_raise_minority_recall(tmp_path: Path) -> None:
    frame = synthetic_table(600, prevalence=0.1, noise=1.0)
    recall = {}
    for weights in ("none", "balanced"):
        cfg = table_config(frame, tmp_path / weights, train={"class_weights": weights, "epochs": 5})
        recall[weights] = _fit(cfg).metrics["test"]["per_class"]["pos"]["recall"]
    assert recall["balanced"] > recall["none"] + 0.2, recall


def _count_training_draws(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Labels of the samples drawn while the dataset is in training mode (the sampler's output)."""
    from medmodal.data.dataset import MultimodalDataset

    drawn: list[int] = []
    get = MultimodalDataset.__getitem__

    def counting(self: MultimodalDataset, i: int) -> dict[str, Any]:
        sample = get(self, i)
        if self.train:
            drawn.append(int(sample["label"]))
        return sample

    monkeypatch.setattr(MultimodalDataset, "__getitem__", counting)
    return drawn


def test_balanced_sampler_draws_classes_equally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = synthetic_table(400, prevalence=0.1)
    share = {}
    for sampler in ("none", "balanced"):
        drawn = _count_training_draws(monkeypatch)
        cfg = table_config(frame, tmp_path / sampler, train={"sampler": sampler, "epochs": 4})
        run = _fit(cfg)
        assert len(drawn) >= 4 * run.metrics["n"]["train"] - 4  # every epoch draws a full set
        share[sampler] = float(np.mean(drawn))
    assert abs(share["none"] - 0.1) < 0.03, share
    assert abs(share["balanced"] - 0.5) < 0.06, share


# -- bf16 autocast and device choice ---------------------------------------------------------------
def _fit_watching_linear_dtypes(cfg: dict[str, Any]) -> tuple[api.RunResult, set[torch.dtype]]:
    """Fit, noting the output dtype of every Linear layer run with gradients (training)."""
    dtypes: set[torch.dtype] = set()

    def hook(module: torch.nn.Module, args: Any, out: Any) -> None:
        if isinstance(module, torch.nn.Linear) and torch.is_grad_enabled():
            dtypes.add(out.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        return _fit(cfg), dtypes
    finally:
        handle.remove()


def test_amp_trains_in_bfloat16_on_cpu(tmp_path: Path) -> None:
    seen = {}
    for amp in (False, True):
        cfg = table_config(synthetic_table(120), tmp_path / str(amp), train={"amp": amp})
        run, seen[amp] = _fit_watching_linear_dtypes(cfg)
        assert all(math.isfinite(h["train_loss"]) for h in run.history)
        assert run.metrics["test"]["auroc"] > 0.8
    assert seen[True] == {torch.bfloat16}, seen  # every training forward under autocast
    assert seen[False] == {torch.float32}, seen


def _resolve_device(name: str) -> torch.device:
    from medmodal.utils.runtime import resolve_device

    return resolve_device(name)


def test_device_cpu_and_auto_resolve_to_cpu_here(tmp_path: Path) -> None:
    accelerator = torch.cuda.is_available() or torch.backends.mps.is_available()
    assert _resolve_device("cpu") == torch.device("cpu")
    assert (_resolve_device("auto").type == "cpu") is not accelerator
    frame = synthetic_table(120)
    runs = [_fit(table_config(frame, tmp_path / d, train={"device": d})) for d in ("cpu", "auto")]
    if not accelerator:  # the same device: the same numbers
        timing = ("seconds", "train_seconds", "train_cpu_seconds", "samples_per_second")
        a, b = ([{k: v for k, v in h.items() if k not in timing} for h in r.history] for r in runs)
        assert a == b


@pytest.mark.parametrize("device", ["tpu", "gpu", "cuda:x"])
def test_unknown_device_is_a_config_error(tmp_path: Path, device: str) -> None:
    cfg = table_config(synthetic_table(60), tmp_path / "d", train={"device": device})
    with pytest.raises(ConfigError, match="device"):
        _fit(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_unavailable_device_is_a_config_error(tmp_path: Path) -> None:
    cfg = table_config(synthetic_table(60), tmp_path / "d", train={"device": "cuda"})
    with pytest.raises(ConfigError, match="cuda"):
        _fit(cfg)


# -- resume ---------------------------------------------------------------------------------------
def test_resume_refuses_a_manifest_that_changed(tmp_path: Path) -> None:
    frame = synthetic_table(120)
    cfg = table_config(frame, tmp_path / "r", train={"epochs": 2})
    _fit(cfg)
    changed = frame.copy()
    changed.loc[5, "x2"] += 1.0
    changed.to_csv(cfg["data"]["manifest"], index=False)
    with pytest.raises(ConfigError, match="changed"):
        api.fit(cfg, progress=False, resume=True)
    frame.to_csv(cfg["data"]["manifest"], index=False)  # back as it was: resuming is allowed
    again = api.fit(cfg, progress=False, resume=True)
    assert again.metrics["epochs_run"] == 2
