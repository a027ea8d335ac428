"""Evaluation: metrics, bootstrap confidence intervals, calibration (ECE, temperature scaling),
conformal prediction sets, subgroup metrics and an HTML report, all scored as one frozen
:class:`EvalSpec` (built once from the config) says."""

from medmodal.evaluate.bootstrap import bootstrap_ci, paired_bootstrap_delta
from medmodal.evaluate.calibration import expected_calibration_error, reliability_curve
from medmodal.evaluate.conformal import ConformalFit, fit_conformal, set_summary
from medmodal.evaluate.decision import decide
from medmodal.evaluate.metrics import (
    compute_metrics,
    fast_auroc,
    fast_average_precision,
    metrics_for,
)
from medmodal.evaluate.report import ReportData, ReportParts, write_report
from medmodal.evaluate.spec import EvalSpec
from medmodal.evaluate.subgroups import group_labels, subgroup_metrics
from medmodal.evaluate.temperature import apply_temperature, fit_temperature

__all__ = [
    "ConformalFit",
    "EvalSpec",
    "ReportData",
    "ReportParts",
    "apply_temperature",
    "bootstrap_ci",
    "compute_metrics",
    "decide",
    "expected_calibration_error",
    "fast_auroc",
    "fast_average_precision",
    "fit_conformal",
    "fit_temperature",
    "group_labels",
    "metrics_for",
    "paired_bootstrap_delta",
    "reliability_curve",
    "set_summary",
    "subgroup_metrics",
    "write_report",
]
