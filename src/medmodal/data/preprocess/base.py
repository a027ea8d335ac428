"""The contract every modality processor follows.

A processor turns one manifest row into one model input in two stages:

* ``read(row, root)``: decode the file / cell and apply the *stateless* steps
  (resize, resample, log-mel, band-pass ...). Deterministic, so the dataset
  caches its output: a second epoch never decodes again. Returns ``None`` when
  the modality is absent for that row (empty cell); raises
  :class:`~medmodal.errors.DataError` naming the file when the input is bad.
* ``transform(raw)``: the *fitted* steps (vocabulary, imputation, scaling),
  cheap, learned by ``fit`` on the training split only. Fitted attributes end
  in ``_`` (scikit-learn's contract) and travel in the checkpoint through
  ``state_dict`` as plain Python / tensors, so a checkpoint loads with
  ``torch.load(weights_only=True)``.

``missing()`` returns a placeholder of the right shape for an absent modality;
the model never sees it as data because the ``present`` mask is False.
``augment(x)`` applies training-time random augmentation (default: none).
``info()`` tells encoders what they receive (channels, vocabulary size ...).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from medmodal.data.paths import resolve_path, resolve_ref  # noqa: F401  (re-exported)
from medmodal.data.schema import ModalitySpec
from medmodal.errors import CheckpointError
from medmodal.options import Strict, parse_options
from medmodal.registry import Registry


def is_missing(value: Any) -> bool:
    """True for None, NaN and empty/whitespace strings (an absent cell)."""
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    if isinstance(value, str) and not value.strip():
        return True
    try:
        import pandas as pd

        return bool(pd.isna(value)) if np.ndim(value) == 0 else False
    except (TypeError, ValueError):
        return False


def channel_mean_std(
    arrays: Sequence[np.ndarray], eps: float = 1e-6
) -> tuple[list[float], list[float]]:
    """Mean and std per channel (axis 0) over every other axis, pooled over ``arrays``
    (one pass, float64 sums); std is floored at ``eps``."""
    s = s2 = None
    n = 0
    for r in arrays:
        r64 = np.asarray(r, dtype=np.float64).reshape(r.shape[0], -1)
        s = r64.sum(axis=1) if s is None else s + r64.sum(axis=1)
        s2 = (r64**2).sum(axis=1) if s2 is None else s2 + (r64**2).sum(axis=1)
        n += r64.shape[1]
    if s is None or s2 is None or n == 0:
        raise ValueError("no data to compute channel statistics from")
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
    return mean.tolist(), np.maximum(std, eps).tolist()


def uniform(generator: torch.Generator | None) -> float:
    """One U(0, 1) draw from ``generator`` (the dataset's per-epoch augmentation stream)."""
    return float(torch.rand((), generator=generator))


FITTED_WITH = "fitted_with"
UNFITTED_OPTIONS = {"augment", "crop", "windows"}


class ProcessorOptions(Strict):
    """Options every processor takes (``preprocess:`` in the schema); subclasses add theirs."""

    processor: str | None = Field(default=None, description="use another registered processor")


class ModalityProcessor:
    """Base class; subclasses set ``modality_type`` and ``Options`` and override the stages.

    ``__init__`` only stores: ``self.opts`` holds the validated ``spec.preprocess`` options.
    Fitted attributes end in ``_``, are declared (as None) in ``__init__`` and hold plain
    values; :meth:`state_dict` / :meth:`load_state_dict` save and restore exactly those, and
    :meth:`_restore` rebuilds anything derived from them (lookups, indexes).
    """

    modality_type: ClassVar[str] = ""
    Options: ClassVar[type[ProcessorOptions]] = ProcessorOptions

    def __init__(self, name: str, spec: ModalitySpec) -> None:
        self.name = name
        self.spec = spec
        where = f"modality {name!r} ({spec.type}) preprocess"
        self.opts = parse_options(self.Options, spec.preprocess, where)

    # -- stage 1: stateless, cached ------------------------------------------------
    def read(self, row: Mapping[str, Any], root: Path | None) -> Any | None:
        raise NotImplementedError

    # -- stage 2: fitted on train ----------------------------------------------------
    def fit(self, raws: Sequence[Any]) -> ModalityProcessor:
        """Learn state from the training split's ``read`` outputs (None = absent)."""
        return self

    def transform(self, raw: Any) -> torch.Tensor:
        raise NotImplementedError

    def missing(self) -> torch.Tensor:
        raise NotImplementedError

    def augment(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return x

    def train_input(
        self, x: torch.Tensor, present: bool, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """What a training batch holds for this sample: ``augment(x)`` when the modality is
        present, else the placeholder ``x`` (shaped like an augmented sample: a processor whose
        augmentation changes the shape, e.g. a random crop, cuts it alike)."""
        return self.augment(x, generator) if present else x

    def info(self) -> dict[str, Any]:
        """What the encoder needs to know about the inputs (shape, vocab, ...)."""
        return {}

    # -- persistence -----------------------------------------------------------------
    def fitted_names(self) -> list[str]:
        """Names of the fitted attributes (public, ending in ``_``)."""
        return sorted(k for k in vars(self) if k.endswith("_") and not k.startswith("_"))

    def state_dict(self) -> dict[str, Any]:
        """Fitted state as plain Python values (no pickled objects), with what it was fitted
        with (``fitted_with``: type, columns, options) so it never lands on another setup."""
        state = {k: copy.deepcopy(getattr(self, k)) for k in self.fitted_names()}
        return {**state, FITTED_WITH: self._fitted_with()}

    def load_state_dict(self, state: Mapping[str, Any]) -> ModalityProcessor:
        """Restore :meth:`state_dict`'s output (tensors from a checkpoint become lists)."""
        state = dict(state)
        saved = state.pop(FITTED_WITH, None)
        mine = self._fitted_with()
        if saved is not None and saved != mine:
            differ = sorted(k for k in mine if saved.get(k) != mine[k])
            raise CheckpointError(
                f"modality {self.name!r}: the saved state was fitted with other {differ} "
                f"({ {k: saved.get(k) for k in differ} }, here { ({k: mine[k] for k in differ}) })"
            )
        names = self.fitted_names()
        unknown = sorted(set(state) - set(names))
        if unknown:
            raise CheckpointError(
                f"modality {self.name!r}: saved state has {unknown}, which this "
                f"{self.modality_type} processor does not know (it keeps {names})"
            )
        for k in names:
            setattr(self, k, _plain(state.get(k)))
        self._restore()
        return self

    def _fitted_with(self) -> dict[str, Any]:
        return {
            "type": self.modality_type,
            "columns": self.spec.input_columns(),
            # training-time augmentation, crops and test-time windows do not shape the
            # fitted state (and checkpoints from before those options keep loading)
            "options": self.opts.model_dump(mode="json", exclude=UNFITTED_OPTIONS),
        }

    def _restore(self) -> None:
        """Rebuild derived state after fit or load (default: nothing)."""

    @property
    def is_fitted(self) -> bool:
        return True


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


PROCESSORS: Registry[ModalityProcessor] = Registry("modality processor", context=("name", "spec"))


def create_processor(name: str, spec: ModalitySpec) -> ModalityProcessor:
    """Build the processor for ``spec.type`` (``preprocess.processor`` overrides)."""
    kind = spec.preprocess.get("processor") or spec.type
    return PROCESSORS.create(kind, name=name, spec=spec)
