"""Evaluation: metrics, bootstrap confidence intervals, calibration and an HTML report."""

from medmodal.evaluate.bootstrap import bootstrap_ci, paired_bootstrap_delta
from medmodal.evaluate.calibration import expected_calibration_error, reliability_curve
from medmodal.evaluate.decision import decide
from medmodal.evaluate.metrics import compute_metrics, fast_auroc, fast_average_precision
from medmodal.evaluate.report import write_report

__all__ = [
    "bootstrap_ci",
    "compute_metrics",
    "decide",
    "expected_calibration_error",
    "fast_auroc",
    "fast_average_precision",
    "paired_bootstrap_delta",
    "reliability_curve",
    "write_report",
]
