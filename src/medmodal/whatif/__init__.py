"""Personalised what-if under a treatment for survival models (S-learner): curves under each
treatment value, RMST differences with bootstrap CIs, propensity overlap, and a caveat in every
output. See :func:`medmodal.api.whatif`."""

from medmodal.whatif.core import CAVEAT, WhatIfResult, rmst
from medmodal.whatif.run import run_whatif, write_outputs

__all__ = ["CAVEAT", "WhatIfResult", "rmst", "run_whatif", "write_outputs"]
