"""A stack (Wolpert 1992; AutoGluon's stacker level): an L2 logistic regression on the members'
log-probabilities, for binary and multiclass targets.

It is fitted on the selection rows of the validation split, the rows the weighted ensemble is
chosen on, and scored there by cross-fitting: each row is predicted by a stacker fitted on the
other folds (grouped by patient), so its score is out-of-fold. The ensemble uses the stack
instead of the weighted average only when that out-of-fold score beats the weighted
average's validation score, which is in-sample for its weights (so the stack must beat an
optimistic figure). The test split is never an argument here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

STACK_TASKS = ("binary", "multiclass")
CLIP = 1e-4  # log-probabilities are taken of probabilities clipped to [CLIP, 1 - CLIP]


@dataclass
class Stack:
    """The fitted stacker: ``logits = inputs @ coef.T + intercept``; ``score`` out-of-fold."""

    coef: np.ndarray
    intercept: np.ndarray
    score: float
    folds: int

    def state(self) -> dict[str, Any]:
        return {"coef": self.coef.tolist(), "intercept": self.intercept.tolist(),
                "score": self.score, "folds": self.folds}  # fmt: skip

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> Stack:
        return cls(np.asarray(s["coef"], dtype=np.float64),
                   np.asarray(s["intercept"], dtype=np.float64), float(s["score"]), int(s["folds"]))  # fmt: skip

    def logits(self, views: Sequence[np.ndarray]) -> np.ndarray:
        """(B, outputs) logits from the members' views (binary (B, 1), multiclass (B, K))."""
        return stack_inputs(views) @ self.coef.T + self.intercept


def stack_inputs(views: Sequence[np.ndarray]) -> np.ndarray:
    """Members' probabilities -> the stacker's inputs: binary, each member's log-odds;
    multiclass, each member's log-probability of every class."""
    cols = []
    for v in views:
        p = np.clip(np.asarray(v, dtype=np.float64), CLIP, 1 - CLIP)
        cols.append(np.log(p) - np.log1p(-p) if p.shape[1] == 1 else np.log(p))
    return np.concatenate(cols, axis=1)


def fit_stack(views: Sequence[np.ndarray], y: np.ndarray, groups: Sequence[Any], task: str,
              score: Callable[[np.ndarray], float], seed: int, folds: int = 5) -> Stack | None:  # fmt: skip
    """The stacker fitted on all rows with its cross-fitted score, or None when the task has
    no stack or the rows cannot be split (a class with fewer patients than folds)."""
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.asarray(y).astype(int).reshape(-1)
    n_classes = views[0].shape[1] if task == "multiclass" else 2
    counts = [len(set(np.asarray(groups, dtype=object)[y == c])) for c in range(n_classes)]
    k = min(folds, *counts)
    if task not in STACK_TASKS or k < 2:
        return None
    x = stack_inputs(views)
    oof = np.zeros((len(y), views[0].shape[1]))
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for tr, te in cv.split(x, y, np.asarray(groups, dtype=object)):
        if len(np.unique(y[tr])) < n_classes:
            return None
        oof[te] = _view(_fit(x[tr], y[tr]).predict_proba(x[te]), task)
    final = _fit(x, y)
    return Stack(final.coef_.astype(np.float64), final.intercept_.astype(np.float64),
                 float(score(oof)), k)  # fmt: skip


def _fit(x: np.ndarray, y: np.ndarray) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0, max_iter=2000).fit(x, y)


def _view(proba: np.ndarray, task: str) -> np.ndarray:
    return proba[:, 1:2] if task == "binary" else proba


__all__ = ["STACK_TASKS", "Stack", "fit_stack", "stack_inputs"]
