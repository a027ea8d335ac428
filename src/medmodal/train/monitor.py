"""Fast validation scores used to pick the best epoch (full metrics live in ``evaluate``)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score


def monitor_score(y: np.ndarray, probs: np.ndarray, task: str) -> dict[str, float]:
    """AUROC, AUPRC, accuracy and macro-F1; AUROC falls back to NaN when undefined."""
    out: dict[str, float] = {}
    if task == "binary":
        pred = (probs >= 0.5).astype(int)
        out["accuracy"] = float((pred == y).mean())
        out["f1_macro"] = float(f1_score(y, pred, average="macro", zero_division=0))
        two = len(np.unique(y)) == 2
        out["auroc"] = float(roc_auc_score(y, probs)) if two else float("nan")
        out["auprc"] = float(average_precision_score(y, probs)) if two else float("nan")
    elif task == "multiclass":
        pred = probs.argmax(1)
        out["accuracy"] = float((pred == y).mean())
        out["f1_macro"] = float(f1_score(y, pred, average="macro", zero_division=0))
        aucs, aps = [], []
        for k in range(probs.shape[1]):
            yk = (y == k).astype(int)
            if 0 < yk.sum() < len(yk):
                aucs.append(roc_auc_score(yk, probs[:, k]))
                aps.append(average_precision_score(yk, probs[:, k]))
        out["auroc"] = float(np.mean(aucs)) if aucs else float("nan")
        out["auprc"] = float(np.mean(aps)) if aps else float("nan")
    else:
        pred = (probs >= 0.5).astype(int)
        out["accuracy"] = float((pred == y).mean())
        out["f1_macro"] = float(f1_score(y, pred, average="macro", zero_division=0))
        ok = [k for k in range(y.shape[1]) if 0 < y[:, k].sum() < len(y)]
        out["auroc"] = (
            float(np.mean([roc_auc_score(y[:, k], probs[:, k]) for k in ok]))
            if ok
            else float("nan")
        )
        out["auprc"] = (
            float(np.mean([average_precision_score(y[:, k], probs[:, k]) for k in ok]))
            if ok
            else float("nan")
        )
    return out
