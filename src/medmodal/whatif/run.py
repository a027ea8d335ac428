"""The what-if as one call: curves under each treatment value, RMST and hazard-ratio effects,
propensity overlap, and the CSV / JSON / PNG outputs (each with the caveat)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medmodal.errors import ConfigError
from medmodal.options import Strict, parse_options
from medmodal.predictor import Predictor
from medmodal.utils.io import dump_json
from medmodal.whatif.core import (
    CAVEAT,
    WhatIfResult,
    at_horizon,
    curves_under,
    default_horizon,
    rmst,
    treatment_values,
)
from medmodal.whatif.effects import effect_summary, log_hazard_ratio
from medmodal.whatif.propensity import propensity


class WhatIfOptions(Strict):
    """What ``run_whatif`` compares and how: ``values`` of the treatment (default: all seen),
    the ``reference`` value (default: the first), the RMST ``horizon`` (default: the 80th
    percentile of the times), ``n_boot`` bootstrap resamples for the CIs and their ``seed``."""

    values: Sequence[str | int | float] | None = None
    reference: str | None = None
    horizon: float | None = None
    n_boot: int = 1000
    seed: int = 0


def whatif_options(options: Mapping[str, Any] | WhatIfOptions | None) -> WhatIfOptions:
    """``options`` validated (a misspelled one is a ConfigError naming the allowed ones)."""
    return parse_options(WhatIfOptions, options, "whatif options")


def run_whatif(
    predictor: Predictor,
    frame: pd.DataFrame,
    root: Path | None,
    treatment: str,
    **options: Any,
) -> WhatIfResult:
    """Every row's survival curve with ``treatment`` set to each value; RMST to ``horizon``
    and its difference from ``reference`` (default: the first value), averaged with a
    patient-grouped bootstrap CI; the propensity overlap of a binary treatment. ``options``:
    the fields of :class:`WhatIfOptions`."""
    o = whatif_options(options)
    n_boot, seed = o.n_boot, o.seed
    vals = treatment_values(predictor, frame, treatment, o.values)
    if len(vals) < 2:
        raise ConfigError(f"treatment {treatment!r} needs at least two values, got {vals}")
    ref = o.reference if o.reference is not None else vals[0]
    if ref not in vals:
        raise ConfigError(f"reference {ref!r} is not one of the values {vals}")
    times = np.asarray(predictor.label_map.times, dtype=float)
    h = float(o.horizon) if o.horizon is not None else default_horizon(predictor, times)
    curves: dict[str, np.ndarray] = {}
    for v in vals:
        ids, patients, curves[v] = curves_under(predictor, frame, root, treatment, v)
    out = pd.DataFrame({"sample_id": ids, "patient_id": patients})
    if treatment in frame.columns:
        out[f"{treatment}_actual"] = predictor.align(frame)[treatment].to_numpy()
    prop, overlap = propensity(predictor.align(frame), predictor.schema, treatment, vals)
    if prop is not None:
        out["propensity"] = prop
    effects = []
    for v in vals:
        out[f"rmst_{v}"] = rmst(curves[v], times, h)
    for v in (v for v in vals if v != ref):
        d = out[f"rmst_{v}"].to_numpy() - out[f"rmst_{ref}"].to_numpy()
        lhr = log_hazard_ratio(at_horizon(curves[v], times, h), at_horizon(curves[ref], times, h))
        out[f"delta_rmst_{v}_vs_{ref}"], out[f"hazard_ratio_{v}_vs_{ref}"] = d, np.exp(lhr)
        summary = effect_summary(d, lhr, patients, n_boot, seed)
        effects.append({"value": v, "reference": ref, **summary})
    out["caveat"] = CAVEAT
    summary = _summary(predictor, treatment, vals, ref, h, out, effects, overlap)
    return WhatIfResult(out, times, curves, summary)


def _summary(
    predictor: Predictor,
    treatment: str,
    vals: list[str],
    ref: str,
    horizon: float,
    out: pd.DataFrame,
    effects: list[dict[str, Any]],
    overlap: dict[str, Any],
) -> dict[str, Any]:
    survival = predictor.survival
    return {
        "caveat": CAVEAT,
        "treatment": treatment,
        "values": vals,
        "reference": ref,
        "horizon": horizon,
        "n": len(out),
        "patients": int(out["patient_id"].nunique()),
        "method": survival.method if survival is not None else None,
        "mean_rmst": {v: float(out[f"rmst_{v}"].mean()) for v in vals},
        "effects": effects,
        "overlap": overlap,
        "uncertainty": "bootstrap over patients of the rows given (whole patients resampled): "
        "it covers which patients were scored, not the uncertainty of the fitted model itself",
        "hazard_ratio": "geometric mean over rows of the cumulative-hazard ratio at the horizon "
        "(for a Cox model each row's hazard ratio, the same at every time)",
    }


def write_outputs(result: WhatIfResult, out_dir: str | Path) -> dict[str, Path]:
    """whatif.csv (one row per sample), whatif.json (the summary) and whatif.png (curves and
    propensity overlap), each with the caveat."""
    from medmodal.whatif.plot import whatif_figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / "whatif.csv", "json": out / "whatif.json", "png": out / "whatif.png"}
    result.frame.to_csv(files["csv"], index=False)
    dump_json(files["json"], result.summary)
    whatif_figure(result).savefig(files["png"], dpi=100, bbox_inches="tight")
    result.files = files
    return files
