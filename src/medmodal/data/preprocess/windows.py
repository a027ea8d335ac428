"""Random-crop training windows and sliding-window test-time aggregation, for any processor
whose output has a time axis last (signal: samples ``(C, L)``; audio: frames ``(1, F, T)``).

Two options a processor adds to its ``preprocess:`` keys (:class:`CropWindowOptions`):

* ``crop: <n>``: during training each present sample is cut to ``n`` steps at a random start
  (seeded per epoch like every augmentation); absent rows get the first ``n`` steps of their
  placeholder, so a batch stacks. Validation, test and prediction see the whole input.
* ``windows: {length, hop, aggregate}``: the model runs the encoder on every window of
  ``length`` steps taken every ``hop`` steps (default: ``crop``, half of it; the last window is
  aligned to the end when the hop does not reach it) and aggregates the embeddings, ``mean``
  or ``max``, before the fusion (:mod:`medmodal.models.windows`). The processor reports the
  geometry in ``info()["windows"]``; the model built from that info windows every input longer
  than ``length`` (validation, test, ``evaluate``, ``predict``, the service and ONNX export
  all call the same model), and passes an input of ``length`` steps or less straight through
  (the training crops).

Strodthoff et al. 2021 (PTB-XL) train on random 2.5 s crops and average the predictions of
half-overlapping 2.5 s windows at test: ``crop: 250, windows: {}`` at 100 Hz.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from medmodal.options import Strict


class WindowOptions(Strict):
    """Sliding windows at test time (see the module doc)."""

    length: int | None = Field(default=None, ge=1, description="steps per window (default: crop)")
    hop: int | None = Field(default=None, ge=1, description="steps between starts (length // 2)")
    aggregate: Literal["mean", "max"] = Field(
        default="mean", description="how the windows' embeddings are combined"
    )


class CropWindowOptions(Strict):
    """The ``crop`` and ``windows`` options (mixed into a processor's options)."""

    crop: int | None = Field(
        default=None, ge=1, description="training: a random crop of this many steps (last axis)"
    )
    windows: WindowOptions | None = Field(
        default=None, description="test time: encode sliding windows and aggregate them"
    )

    @model_validator(mode="after")
    def _windows_need_a_length(self) -> CropWindowOptions:
        w = self.windows
        if w is not None and w.length is None and self.crop is None:
            raise ValueError("windows needs a length (or set crop, its default)")
        if w is not None and w.hop is not None and w.length is not None and w.hop > w.length:
            raise ValueError(f"windows.hop ({w.hop}) cannot exceed windows.length ({w.length})")
        return self


def window_info(opts: CropWindowOptions) -> dict[str, Any] | None:
    """``{"length", "hop", "aggregate"}`` for the model (None without ``windows``)."""
    w = opts.windows
    if w is None:
        return None
    length = int(w.length or opts.crop or 0)
    hop = int(w.hop or max(1, length // 2))
    if hop > length:
        raise ValueError(f"windows.hop ({hop}) cannot exceed the window length ({length})")
    return {"length": length, "hop": hop, "aggregate": w.aggregate}


def encoder_steps(opts: CropWindowOptions, full: int) -> int:
    """The steps an encoder sees per input: the window (or crop) length, else ``full``."""
    info = window_info(opts)
    if info is not None:
        return min(info["length"], full)
    return min(opts.crop, full) if opts.crop else full


def random_crop(x: torch.Tensor, length: int, generator: torch.Generator | None) -> torch.Tensor:
    """``length`` steps of ``x`` along its last axis from a uniform random start (``x``
    itself when it is not longer)."""
    n = int(x.shape[-1])
    if n <= length:
        return x
    start = int(torch.randint(0, n - length + 1, (), generator=generator))
    return x[..., start : start + length]


def head_crop(x: torch.Tensor, length: int | None) -> torch.Tensor:
    """The first ``length`` steps (an absent row's placeholder in a cropped training batch)."""
    return x if length is None or x.shape[-1] <= length else x[..., :length]
