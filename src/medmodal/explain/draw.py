"""Explanations as PNG figures (matplotlib's Agg canvas, no pyplot state).

Images: the input beside the map overlaid on it (3D: three orthogonal slices through the most
attributed voxel). Spectrograms: the same, frequency upwards. Signals: each lead's trace coloured
by its attribution over time. Notes: the words on coloured boxes. Records and modalities: bars.
Grad-CAM maps (0 to 1) use ``jet``; signed attributions a diverging map centred on zero (red:
towards the explained class, blue: against it).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from medmodal.explain.base import Attribution

MAX_BARS = 20
MAX_LEADS = 12
WRAP_CHARS = 90
WORD_GAP = 1.6  # characters between words (the boxes' padding takes part of it)
CHAR_INCHES = 0.075  # width of a 9 pt monospace character: one x unit of the word layout


def png_bytes(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def save_png(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(fig))
    return path


def png_base64(fig: Figure) -> str:
    return base64.b64encode(png_bytes(fig)).decode("ascii")


def _signed(values: np.ndarray) -> bool:
    return bool((np.asarray(values) < 0).any())


def _style(values: np.ndarray) -> tuple[str, Normalize]:
    """Colour map and limits: jet on [0, 1] for Grad-CAM, a symmetric diverging map otherwise."""
    v = np.asarray(values, dtype=float)
    if not _signed(v) and v.max(initial=0) <= 1.0:
        return "jet", Normalize(0.0, 1.0)
    lim = float(np.percentile(np.abs(v), 99.5)) or float(np.abs(v).max()) or 1.0
    return "RdBu_r", Normalize(-lim, lim)


def _gray(background: np.ndarray) -> np.ndarray:
    """A (C, H, W) processed image for display: RGB when C == 3, else the channel mean,
    rescaled to [0, 1]."""
    x = np.asarray(background, dtype=float)
    x = np.moveaxis(x, 0, -1) if x.shape[0] == 3 else x.mean(axis=0)
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def _overlay(ax: Any, under: np.ndarray, values: np.ndarray, **kw: Any) -> Any:
    """``values`` over a grey ``under``: Grad-CAM half transparent everywhere; a signed map
    opaque in proportion to |value| (near-zero attributions leave the image visible)."""
    cmap, norm = _style(values)
    ax.imshow(under, cmap="gray", **kw)
    alpha: Any = 0.5
    if cmap != "jet":
        alpha = np.clip(np.abs(values) / max(norm.vmax or 1.0, 1e-12), 0, 1) * 0.9
    im = ax.imshow(values, cmap=cmap, norm=norm, alpha=alpha, **kw)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def draw_image(att: Attribution, title: str) -> Figure:
    fig = Figure(figsize=(7.0, 3.6))
    a, b = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    under = _gray(att.background) if att.background is not None else np.zeros(att.values.shape)
    a.imshow(under, cmap=None if under.ndim == 3 else "gray")
    a.set(xticks=[], yticks=[], title="input")
    im = _overlay(b, under if under.ndim == 2 else under.mean(-1), att.values)
    b.set_title(att.method)
    fig.colorbar(im, ax=b, fraction=0.046)
    fig.suptitle(title, fontsize="small")
    return fig


def draw_volume(att: Attribution, title: str) -> Figure:
    """Three orthogonal slices through the voxel of largest |attribution|."""
    v = np.asarray(att.values, dtype=float)
    under = _gray(att.background) if att.background is not None else np.zeros(v.shape)
    centre = np.unravel_index(int(np.argmax(np.abs(v))), v.shape)
    fig = Figure(figsize=(9.0, 3.4))
    im = None
    for axis in range(3):
        ax = fig.add_subplot(1, 3, axis + 1)
        take = (slice(None),) * axis + (centre[axis],)
        im = _overlay(ax, under[take], v[take])
        ax.set_title(f"axis {axis}, slice {centre[axis]}", fontsize="small")
    fig.colorbar(im, ax=fig.axes, fraction=0.02)
    fig.suptitle(f"{title} ({att.method})", fontsize="small")
    return fig


def draw_spectrogram(att: Attribution, title: str) -> Figure:
    fig = Figure(figsize=(7.0, 5.0))
    a, b = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    under = _gray(att.background) if att.background is not None else np.zeros(att.values.shape)
    kw = {"origin": "lower", "aspect": "auto"}
    a.imshow(under, cmap="magma", **kw)
    a.set(title="input (features x frames)", xticks=[], yticks=[])
    im = _overlay(b, under, att.values, **kw)
    b.set_title(att.method)
    fig.colorbar(im, ax=[a, b], fraction=0.03)
    fig.suptitle(title, fontsize="small")
    return fig


def draw_signal(att: Attribution, title: str) -> Figure:
    """Each lead's trace coloured by its attribution at every time step."""
    x = np.asarray(att.background if att.background is not None else att.values, dtype=float)
    v = np.asarray(att.values, dtype=float)
    leads = list(att.info.get("leads") or [f"lead {i + 1}" for i in range(len(x))])
    fs = att.info.get("fs")
    n = min(len(x), MAX_LEADS)
    t = np.arange(x.shape[1]) / float(fs) if fs else np.arange(x.shape[1])
    cmap, norm = _style(v)
    fig = Figure(figsize=(9.0, 1.0 + 1.3 * n))
    lines = None
    for i in range(n):
        ax = fig.add_subplot(n, 1, i + 1)
        ax.plot(t, x[i], color="0.7", lw=1.0, zorder=0)  # the trace where attributions are ~0
        pts = np.stack([t, x[i]], axis=1)
        segs = np.stack([pts[:-1], pts[1:]], axis=1)
        lines = LineCollection(segs, cmap=cmap, norm=norm, linewidths=2.0)
        lines.set_array((v[i, :-1] + v[i, 1:]) / 2)
        ax.add_collection(lines)
        ax.set_xlim(t[0], t[-1])
        pad = 0.05 * (np.ptp(x[i]) or 1.0)
        ax.set_ylim(x[i].min() - pad, x[i].max() + pad)
        ax.set_ylabel(leads[i] if i < len(leads) else f"lead {i + 1}", fontsize="small")
        if i < n - 1:
            ax.set_xticklabels([])
    fig.axes[-1].set_xlabel("time (s)" if fs else "sample")
    fig.colorbar(lines, ax=fig.axes, fraction=0.02)
    more = f" (first {n} of {len(x)} leads)" if len(x) > n else ""
    fig.suptitle(f"{title} ({att.method}){more}", fontsize="small")
    return fig


def draw_tokens(att: Attribution, title: str) -> Figure:
    """The words in reading order on boxes coloured by their attribution, wrapped."""
    words = list(att.labels or [])
    v = np.asarray(att.values, dtype=float)
    lim = float(np.abs(v).max(initial=0)) or 1.0
    cmap = _cmap("RdBu_r")
    lines: list[list[tuple[str, float]]] = [[]]
    width = 0
    for w, val in zip(words, v, strict=True):
        if width + len(w) > WRAP_CHARS and lines[-1]:
            lines.append([])
            width = 0
        lines[-1].append((w, float(val)))
        width += len(w) + WORD_GAP
    fig = Figure(figsize=(CHAR_INCHES * (WRAP_CHARS + 2), 0.6 + 0.3 * len(lines)))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.set(xlim=(0, WRAP_CHARS + 2), ylim=(len(lines) + 0.5, -1.0))
    for r, line in enumerate(lines):
        col = 0
        for w, val in line:
            box = {"facecolor": cmap(0.5 + 0.5 * val / lim), "edgecolor": "none", "pad": 1.5}
            ink = "white" if abs(val) > 0.6 * lim else "black"
            ax.text(col, r, w, family="monospace", fontsize=9, va="center", color=ink, bbox=box)
            col += len(w) + WORD_GAP
    ax.text(0, -0.6, f"{title} ({att.method}; red: towards, blue: against)", fontsize="small")
    return fig


def _cmap(name: str) -> Any:
    from matplotlib import colormaps

    return colormaps[name]


def draw_bars(att: Attribution, title: str) -> Figure:
    """Per-feature or per-modality values as horizontal bars (largest |value| first)."""
    labels = list(att.labels or [])
    v = np.asarray(att.values, dtype=float)
    order = np.argsort(-np.abs(v))[:MAX_BARS][::-1]
    fig = Figure(figsize=(7.0, 1.2 + 0.35 * len(order)))
    ax = fig.add_subplot()
    colours = ["#c0392b" if v[i] >= 0 else "#2e6da4" for i in order]
    ax.barh([labels[i] for i in order], v[order], color=colours)
    ax.axvline(0, color="black", lw=0.8)
    scale = att.info.get("scale", "attribution")
    ax.set_xlabel(f"contribution ({scale})")
    sub = ""
    if att.kind == "modalities":
        sub = f"\nP(none) {att.info['p_none']:.3f} -> P(all) {att.info['p_all']:.3f}"
    ax.set_title(f"{title} ({att.method}){sub}", fontsize="small")
    return fig


DRAW = {
    "image": draw_image,
    "volume": draw_volume,
    "spectrogram": draw_spectrogram,
    "signal": draw_signal,
    "tokens": draw_tokens,
    "features": draw_bars,
    "modalities": draw_bars,
}


def draw(att: Attribution, title: str) -> Figure:
    """The figure of one attribution, by its kind."""
    return DRAW[att.kind](att, title)
