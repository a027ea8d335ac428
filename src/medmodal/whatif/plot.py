"""The what-if figure: mean predicted survival under each treatment value (and a few example
rows), the propensity distributions by actual treatment, and the caveat underneath."""

from __future__ import annotations

import textwrap

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medmodal.whatif.core import CAVEAT, WhatIfResult

EXAMPLES = 3


def whatif_figure(result: WhatIfResult) -> Figure:
    """Two panels (curves, propensity) with the caveat as a footnote."""
    fig = Figure(figsize=(12, 5.2))
    FigureCanvasAgg(fig)
    _curves(fig.add_subplot(1, 2, 1), result)
    _propensity(fig.add_subplot(1, 2, 2), result)
    fig.text(0.01, -0.06, textwrap.fill(CAVEAT, 170), fontsize=9, va="top", color="#a00")
    return fig


def _curves(ax: Axes, result: WhatIfResult) -> None:
    s, t = result.summary, result.times
    colors = ["C0", "C1", "C2", "C3", "C4", "C5"]
    for k, (v, c) in enumerate(result.curves.items()):
        color = colors[k % len(colors)]
        ax.step(
            t, c.mean(0), where="post", color=color, lw=2.5, label=f"{s['treatment']} = {v} (mean)"
        )
        for i in range(min(EXAMPLES, len(c))):
            ax.step(t, c[i], where="post", color=color, lw=0.8, alpha=0.6)
    ax.axvline(s["horizon"], ls=":", color="grey", label=f"RMST horizon {s['horizon']:g}")
    eff = "; ".join(
        f"{e['value']} vs {e['reference']}: dRMST {e['mean_delta_rmst']:+.1f}, HR {e['hazard_ratio']:.2f}"
        for e in s["effects"]
    )
    ax.set(xlabel="time", ylabel="predicted survival", ylim=(0, 1.02), title=eff)
    ax.legend(loc="lower left", fontsize="small", title=f"thin: {EXAMPLES} example rows")


def _propensity(ax: Axes, result: WhatIfResult) -> None:
    f, s = result.frame, result.summary
    actual = f"{s['treatment']}_actual"
    if "propensity" not in f or actual not in f:
        ax.text(0.5, 0.5, s["overlap"]["summary"], ha="center", va="center", wrap=True)
        ax.set_axis_off()
        return
    bins = np.linspace(0, 1, 26)
    for v in s["values"]:
        p = f.loc[f[actual].astype(str) == str(v), "propensity"]
        ax.hist(p, bins=bins, alpha=0.5, label=f"actual {s['treatment']} = {v} (n={len(p)})")
    ax.set(xlabel=f"propensity P({s['treatment']} = {s['values'][1]} | covariates)", ylabel="rows")
    ax.set_title("Covariate overlap: " + textwrap.fill(s["overlap"]["summary"], 70), fontsize=9)
    ax.legend(fontsize="small")
