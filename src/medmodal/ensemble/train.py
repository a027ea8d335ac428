"""The run step that fits a classical learner or an ensemble (``run.steps.train_model`` hands
composite models here).

An ensemble's members are trained on the training split only (deep members pick their best
epoch on validation, as a single deep model does; classical members never see it), each member
predicts the validation split, and :func:`~medmodal.ensemble.select.greedy_select` chooses the
weights from those validation predictions: the test split is not an argument of anything here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from medmodal.classical.fit import fit_classical
from medmodal.classical.learners import DEFAULT_LEARNERS, check_learner
from medmodal.classical.model import ClassicalModel, learner_of, plan_features
from medmodal.config import ExperimentConfig, MemberSpec
from medmodal.data.dataset import MultimodalDataset
from medmodal.data.splits import patient_split
from medmodal.ensemble.combine import member_view, standardiser
from medmodal.ensemble.members import classical_member, deep_member
from medmodal.ensemble.model import EnsembleModel
from medmodal.ensemble.scores import metric_for, scorer
from medmodal.ensemble.select import Selection, greedy_select
from medmodal.ensemble.stack import STACK_TASKS, Stack, fit_stack
from medmodal.errors import ConfigError
from medmodal.predictor import Predictor, predict_logits
from medmodal.survival import SurvivalModel
from medmodal.train.distributed import world
from medmodal.train.trainer import Trainer, TrainState
from medmodal.utils.runtime import seed_everything


@dataclass
class Candidate:
    """One trained member: its spec, module, validation view and score, and what it took."""

    spec: MemberSpec
    module: nn.Module | None
    view: np.ndarray | None = None
    score: float | None = None
    seconds: float = 0.0
    center: float = 0.0
    scale: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    def about(self, metric: str) -> dict[str, Any]:
        s = self.spec
        out: dict[str, Any] = {"name": s.name, "kind": "deep" if s.learner is None else "classical",
                               "seed": s.seed, "metric": metric, "val_score": self.score,
                               "seconds": round(self.seconds, 2), **self.extra}  # fmt: skip
        if s.learner is not None:
            name, opts = learner_of(s.learner)
            out["learner"] = {"name": name, **opts}
            out["features"] = {m: [{"name": n, **o} for n, o in fs]
                               for m, fs in self.planned.items()}  # fmt: skip
        return out

    planned: dict[str, list[tuple[str, dict[str, Any]]]] = field(default_factory=dict)


def fit_composite(predictor: Predictor, parts: dict[str, MultimodalDataset], cfg: ExperimentConfig,
                  progress: Any = False, console: Any = None) -> TrainState:  # fmt: skip
    """Fit ``predictor.model`` (a classical model or an ensemble) on ``parts["train"]`` (the
    ensemble also reads ``parts["val"]``); the returned state's history says what was fitted."""
    model, train, val = predictor.model, parts["train"], parts.get("val")
    if world()[1] > 1:
        raise ConfigError("classical learners and ensembles train in one process (drop --nproc)")
    if isinstance(model, ClassicalModel):
        info = fit_classical(model, train)
        return TrainState(epoch=0, best_epoch=-1, history=[info])
    assert isinstance(model, EnsembleModel)
    if val is None or len(val) == 0:
        raise ConfigError(
            "model.ensemble chooses its members on the validation split and this run has none "
            "(data.val_fraction = 0 or no 'val' rows)"
        )
    return fit_ensemble(predictor, model, train, val, cfg, progress, console)


def resolve_members(cfg: ExperimentConfig, task: str) -> list[MemberSpec]:
    """The members to train: ``model.ensemble.members``, else the deep model's seeds and the
    task's default learners (first deep seed, the learners, the other seeds), each named."""
    e = cfg.model.ensemble
    assert e is not None
    if e.members:
        return [_named(m, k) for k, m in enumerate(e.members)]
    deep = [
        MemberSpec(name=f"deep (seed {cfg.seed + k})", seed=cfg.seed + k)
        for k in range(e.deep_seeds)
    ]
    learners = e.learners if e.learners is not None else list(DEFAULT_LEARNERS[task])
    classical = [MemberSpec(name=learner_of(lr)[0], learner=lr, seed=cfg.seed) for lr in learners]
    members = deep[:1] + classical + deep[1:]
    if not members:
        raise ConfigError("model.ensemble has no member (deep_seeds: 0 and no learners)")
    return members


def _named(m: MemberSpec, k: int) -> MemberSpec:
    if m.name:
        return m
    name = learner_of(m.learner)[0] if m.learner is not None else f"deep (seed {m.seed or 0})"
    return m.model_copy(update={"name": f"{name} #{k}"})


def check_members(members: list[MemberSpec], predictor: Predictor) -> dict[int, Any]:
    """Every classical member's learner fits the task and its features the modalities (a
    ConfigError before anything trains); the planned extractors per member."""
    ctx = predictor.model.ctx  # type: ignore[union-attr]
    plans = {}
    for k, m in enumerate(members):
        if m.learner is not None:
            check_learner(learner_of(m.learner)[0], ctx.task)
            plans[k] = plan_features(ctx.modality_types, ctx.infos, m.features)
    return plans


def fit_ensemble(predictor: Predictor, model: EnsembleModel, train: MultimodalDataset,
                 val: MultimodalDataset, cfg: ExperimentConfig, progress: Any, console: Any) -> TrainState:  # fmt: skip
    """Train every member (within ``time_budget``), score each on validation, select."""
    e, task = cfg.model.ensemble, model.task
    assert e is not None
    metric = metric_for(e.metric, task)
    members = resolve_members(cfg, task)
    plans = check_members(members, predictor)
    deep = any(m.learner is None for m in members)
    epoch_val, select_val = split_validation(val, e.selection_fraction if deep else 0.0, cfg.seed)
    score = scorer(metric, task, np.asarray(select_val.labels))
    t0, done = time.perf_counter(), []
    for k, spec in enumerate(members):
        spent = time.perf_counter() - t0
        if e.time_budget is not None and done and spent > e.time_budget:  # the first always runs
            done.append(Candidate(spec, None, extra={"skipped": "time budget spent"}))
            continue
        vals = (epoch_val, select_val)
        cand = train_member(spec, predictor, train, vals, cfg, progress, console)
        cand.planned = plans.get(k, {})
        cand.score = _finite(score(cand.view))
        done.append(cand)
        if console is not None:
            console.print(f"ensemble member {spec.name}: validation {metric} {cand.score}")
    y = np.asarray(select_val.labels)
    scarce = scarce_rows(y, task, len(predictor.label_map.classes), e.min_selection_rows)
    stacker = None
    if e.stack and task in STACK_TASKS and scarce is None:
        groups = list(select_val.patients)
        stacker = lambda views: fit_stack(views, y, groups, task, score, cfg.seed)  # noqa: E731
    return _select(model, done, score, metric, e.rounds, e.keep_all, stacker, scarce)


def scarce_rows(y: np.ndarray, task: str, n_classes: int, minimum: int) -> str | None:
    """Why the selection rows are too few to choose weights on (None: enough): the rarest
    class (survival: events; multilabel: positives of a label) has fewer than ``minimum``."""
    if task == "survival":
        count, what = int((y[:, 1] > 0).sum()), "events"
    elif task == "multilabel":
        count, what = int(y.sum(0).min()), "positives of a label"
    else:
        count = int(np.bincount(y.astype(int).reshape(-1), minlength=n_classes).min())
        what = "rows of a class"
    if count >= minimum:
        return None
    return (f"the selection rows hold {count} {what} (< model.ensemble.min_selection_rows = "
            f"{minimum}): every member weighted equally")  # fmt: skip


def _select(
    model: EnsembleModel,
    done: list[Candidate],
    score: Any,
    metric: str,
    rounds: int,
    keep_all: bool = False,
    stacker: Callable[[list[np.ndarray]], Stack | None] | None = None,
    equal: str | None = None,
) -> TrainState:
    """Weights by greedy selection, or the same for all when ``equal`` says why (too few
    selection rows); the stack when ``stacker`` fits one that beats the weights."""
    ready = [c for c in done if c.view is not None]
    if equal is not None:
        sel, rounds = _equal(ready, score), 0
    else:
        sel = greedy_select([c.view for c in ready], score, rounds)
    for c, w in zip(ready, sel.weights, strict=True):
        c.extra["weight"] = float(w)
    stack = stacker([c.view for c in ready]) if stacker is not None else None
    use_stack = stack is not None and stack.score > sel.score
    model.stack = stack if use_stack else None
    chosen = [(c, w) for c, w in zip(ready, sel.weights, strict=True)
              if w > 0 or keep_all or use_stack]  # fmt: skip
    model.set_members([c.module for c, _ in chosen], [w for _, w in chosen],
                      [c.about(metric) for c, _ in chosen],
                      [c.center for c, _ in chosen], [c.scale for c, _ in chosen])  # fmt: skip
    model.candidates = [c.about(metric) for c in done]
    traj = [_finite(v) for v in sel.trajectory]
    model.selection = {"metric": metric, "val_score": _finite(sel.score), "trajectory": traj,
                       "picks": [ready[i].spec.name for i in sel.picks], "rounds": rounds,
                       "equal_weights": equal,
                       "stack": None if stack is None else {"oof_score": stack.score,
                                                            "folds": stack.folds,
                                                            "used": use_stack}}  # fmt: skip
    return TrainState(epoch=0, best_epoch=-1, history=list(model.candidates))


def _equal(ready: list[Candidate], score: Any) -> Selection:
    """Every member the same weight (too few selection rows to choose on)."""
    w = np.full(len(ready), 1.0 / len(ready))
    s = score(sum(c.view for c in ready) / len(ready))
    return Selection(w, [s], list(range(len(ready))), s)


def split_validation(
    val: MultimodalDataset, fraction: float, seed: int
) -> tuple[MultimodalDataset, MultimodalDataset]:
    """(rows the deep members pick their epoch on, rows the selection scores): a seeded,
    patient-grouped, stratified share ``fraction`` of the validation patients for the
    selection, the rest for the epochs; with ``fraction`` 0 (or too few patients) both are
    the whole validation split. Deep members' selection scores are then not those their epoch
    was chosen on, so the selection does not favour them for it."""
    if fraction <= 0 or len(set(val.patients)) < 4:
        return val, val
    y = np.asarray(val.labels)
    strata = y[:, 1].astype(int) if y.dtype.kind == "f" and y.ndim == 2 else y
    if strata.ndim > 1:  # multilabel: stratify on the first label
        strata = strata[:, 0]
    parts = patient_split(list(val.patients), strata, fraction, 0.0, seed=seed + 7919)
    sel, epoch = np.flatnonzero(parts == "val"), np.flatnonzero(parts == "train")
    if len(sel) == 0 or len(epoch) == 0:
        return val, val
    return val.subset(epoch).finalize("memory"), val.subset(sel).finalize("memory")


def train_member(
    spec: MemberSpec,
    predictor: Predictor,
    train: MultimodalDataset,
    vals: tuple[MultimodalDataset, MultimodalDataset],
    cfg: ExperimentConfig,
    progress: Any,
    console: Any,
) -> Candidate:
    """Train one member on ``train`` (a deep one picks its epoch on ``vals[0]``) and compute its
    view of the selection rows ``vals[1]``."""
    epoch_val, val = vals
    ens = predictor.model
    assert isinstance(ens, EnsembleModel)
    t0 = time.perf_counter()
    seed = cfg.seed if spec.seed is None else spec.seed
    seed_everything(seed)
    extra: dict[str, Any] = {}
    if spec.learner is None:
        module = deep_member(cfg.model, ens.ctx)
        state = _train_deep(module, predictor, train, epoch_val, cfg, seed, progress, console)
        extra.update(best_epoch=state.best_epoch, epochs_run=state.epoch)
    else:
        module = classical_member(spec.learner, spec.features, ens.ctx, seed)
        extra.update(fit_classical(module, train))
    logits = predict_logits(module, val, cfg.train.eval_batch_size, predictor.device)
    center, scale = standardiser(logits.numpy()) if ens.task == "survival" else (0.0, 1.0)
    view = member_view(logits, ens.task, center, scale).numpy()
    return Candidate(spec, module, view, None, time.perf_counter() - t0, center, scale, extra)


def _train_deep(module: nn.Module, predictor: Predictor, train: MultimodalDataset, val: MultimodalDataset,
                cfg: ExperimentConfig, seed: int, progress: Any, console: Any) -> TrainState:  # fmt: skip
    survival = None
    if predictor.label_map.task == "survival":
        survival = SurvivalModel(cfg.model.survival)
        y = np.asarray(train.labels)
        survival.fit_cuts(y[:, 0], y[:, 1])
    trainer = Trainer(module, predictor.eval_spec, cfg.train, seed=seed, progress=progress,
                      console=console, survival=survival)  # fmt: skip
    return trainer.fit(train, val)


def _finite(s: float) -> float | None:
    return float(s) if s is not None and np.isfinite(s) else None


def composite_summary(model: nn.Module) -> dict[str, Any] | None:
    """What ``metrics.json`` records about a classical model or an ensemble (None otherwise)."""
    if isinstance(model, ClassicalModel):
        return {"kind": "classical", "describe": model.describe(), "learner": model.learner_name,
                "features": {m: [n for n, _ in s] for m, s in model.plan.items()},
                "n_features": len(model.feature_names())}  # fmt: skip
    if isinstance(model, EnsembleModel):
        members = [{**a, "weight": w} for a, w in zip(model.about, model.weights, strict=True)]
        return {"kind": "ensemble", "describe": model.describe(), "members": members,
                "candidates": model.candidates, "selection": model.selection}  # fmt: skip
    return None


__all__ = ["composite_summary", "fit_composite", "resolve_members"]


def composite_tables(summary: dict[str, Any] | None) -> dict[str, list[dict[str, Any]]] | None:
    """The report's table of an ensemble's members: every member tried, its validation score,
    its weight (0: not chosen) and its training time."""
    if not summary or summary.get("kind") != "ensemble":
        return None
    rows = [
        {"member": c["name"], "kind": c["kind"], "weight": round(c.get("weight", 0.0), 3),
         f"validation {c.get('metric', '')}": c.get("val_score"), "seconds": c.get("seconds"),
         "note": c.get("skipped", "")}
        for c in summary.get("candidates", [])
    ]  # fmt: skip
    sel = summary.get("selection", {})
    rows.append({"member": "ensemble", "kind": "weighted", "weight": 1.0,
                 f"validation {sel.get('metric', '')}": sel.get("val_score"), "seconds": None,
                 "note": sel.get("equal_weights")
                 or f"greedy selection with replacement, {sel.get('rounds')} rounds"})  # fmt: skip
    stack = sel.get("stack")
    if stack:
        rows.append({"member": "stack", "kind": "logistic regression", "weight": None,
                     f"validation {sel.get('metric', '')}": stack["oof_score"], "seconds": None,
                     "note": f"out-of-fold ({stack['folds']} folds); "
                     + ("used instead of the weights" if stack["used"] else "not better: unused")})  # fmt: skip
    return {"Ensemble members (chosen on the validation split)": rows}
