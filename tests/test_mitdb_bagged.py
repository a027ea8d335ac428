"""The MIT-BIH bagged arm's decision rule and record groups (benchmarks/mitdb_bagged.py), on
synthetic probabilities: mechanics only, the DS2 figures are in benchmarks/results/mitdb.md."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import mitdb_bagged as B  # noqa: E402


def _frame(rng: np.random.Generator, n: dict[str, int], shy: str, shift: float) -> pd.DataFrame:
    """Probabilities that rank every class right but under-call ``shy`` by ``shift`` in log space."""
    labels = np.concatenate([[c] * k for c, k in n.items()])
    logits = rng.normal(0, 1, (len(labels), 4))
    logits[np.arange(len(labels)), [B.CLASSES.index(c) for c in labels]] += 3.0
    logits[:, B.CLASSES.index(shy)] -= shift
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    out = pd.DataFrame(p, columns=[f"prob_{c}" for c in B.CLASSES])
    out["label"] = labels
    return out


def test_offsets_undo_an_under_called_class_and_keep_the_n_floor() -> None:
    rng = np.random.default_rng(0)
    oof = _frame(rng, {"N": 3000, "S": 200, "V": 200, "F": 60}, shy="F", shift=4.0)
    offsets, facts = B.choose_offsets(oof)
    assert offsets[0] == 0.0 and offsets[3] > 2.0  # F pushed back up
    assert facts["oof_mean_se"] > facts["oof_mean_se_argmax"] + 10
    decided = B.decide(oof, offsets)
    pred = decided["predicted"].to_numpy()
    probs = decided[[f"prob_{c}" for c in B.CLASSES]].to_numpy()  # what a bootstrap scores
    assert np.allclose(probs.sum(1), 1) and (np.array(B.CLASSES)[probs.argmax(1)] == pred).all()
    assert 100 * (pred[oof["label"] == "N"] == "N").mean() >= B.N_FLOOR
    assert (B.decide(oof, np.zeros(4))["predicted"] == "F").sum() < (pred == "F").sum()


def test_no_offsets_when_n_cannot_keep_its_floor() -> None:
    rng = np.random.default_rng(1)
    oof = _frame(rng, {"N": 500, "S": 500, "V": 50, "F": 50}, shy="N", shift=6.0)
    offsets, facts = B.choose_offsets(oof)
    assert np.all(offsets == 0) and facts["oof_mean_se"] == -1.0


def test_record_groups_cover_ds1_once_and_spread_the_rare_records() -> None:
    recs = {f"r{i}": ("S" if i < 5 else "N") for i in range(21)}
    m = pd.DataFrame(
        [{"record": r, "label": lab, "split": "train"} for r, lab in recs.items() for _ in range(3)]
        + [{"record": "t1", "label": "S", "split": "test"}]
    )
    groups = B.record_groups(m)
    flat = [r for g in groups for r in g]
    assert sorted(flat) == sorted(recs) and len(groups) == B.K
    assert all(sum(recs[r] == "S" for r in g) == 1 for g in groups)
