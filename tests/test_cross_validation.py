"""Cross-validation through ``api.cross_validate`` on a SYNTHETIC table where patients own several
rows: every patient in exactly one fold, class proportions kept in every fold."""

from __future__ import annotations

from pathlib import Path

from conftest import synthetic_table, table_config

from medmodal import api


def test_folds_keep_multi_row_patients_whole_and_stratified(tmp_path: Path) -> None:
    frame = synthetic_table(240, prevalence=0.3, rows_per_patient=(1, 2, 3))
    cv = api.cross_validate(table_config(frame, tmp_path / "cv", train={"epochs": 1}), k=4)
    pred = cv.predictions
    assert len(pred) == len(frame) and pred["sample_id"].is_unique
    rows = pred.groupby("patient_id").size()
    assert (rows > 1).sum() >= 50 and rows.max() == 3  # the test has multi-row patients
    assert (pred.groupby("patient_id")["fold"].nunique() == 1).all()  # never split across folds
    assert sorted(pred["fold"].unique()) == [0, 1, 2, 3]
    overall = (pred["label"] == "pos").mean()
    share = pred.groupby("fold")["label"].apply(lambda s: (s == "pos").mean())
    assert (share - overall).abs().max() < 0.05, share.to_dict()  # stratified
    assert len(cv.folds) == 4 and all(r.metrics["n"]["train"] > 0 for r in cv.folds)
