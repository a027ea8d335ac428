"""Decode limits: how large a decoded input may be, checked from its header before decoding.

A reader that knows from a file's header what decoding it would produce (pixels, voxels,
samples, and the bytes its decode would allocate at its peak) calls :func:`check_decode` before
it decodes. The limits and a byte budget are set for a block of code with :func:`decode_limits`:
the prediction service sets them for each request, so a decompression bomb or an oversized
image is refused from its header, before any memory is spent. Outside such a block nothing is
limited here (training reads what it is given); Pillow's own bomb check still applies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import BinaryIO, Literal

import numpy as np

from medmodal.errors import DataError

MB = 1 << 20
Kind = Literal["pixels", "voxels", "samples"]


@dataclass(frozen=True)
class DecodeLimits:
    """``max_pixels`` per 2D image (rows x columns), ``max_voxels`` per volume or multi-frame
    image, ``max_samples`` per signal or recording (channels x samples), ``budget_bytes`` what
    every decode within the block may allocate together (estimated peaks). None: no limit."""

    max_pixels: int | None = None
    max_voxels: int | None = None
    max_samples: int | None = None
    budget_bytes: int | None = None


class DecodeLimitError(DataError):
    """Decoding the input would exceed a limit (the service answers 413 naming the part)."""


@dataclass
class _Active:
    limits: DecodeLimits
    spent: int = 0


_ACTIVE: ContextVar[_Active | None] = ContextVar("medmodal_decode_limits", default=None)


@contextmanager
def decode_limits(limits: DecodeLimits | None) -> Iterator[None]:
    """Within the block, :func:`check_decode` enforces ``limits`` with a fresh byte budget."""
    token = _ACTIVE.set(None if limits is None else _Active(limits))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active_limits() -> DecodeLimits | None:
    state = _ACTIVE.get()
    return None if state is None else state.limits


def check_decode(kind: Kind, count: int, nbytes: int, source: object, what: str) -> None:
    """DecodeLimitError when ``count`` values of ``kind`` exceed their limit, or ``nbytes``
    (the decode's estimated peak allocation) exceed what is left of the budget; else charge
    ``nbytes`` to the budget. ``what`` describes the input (``"4000 x 3000 image"``)."""
    state = _ACTIVE.get()
    if state is None:
        return
    limit = getattr(state.limits, f"max_{kind}")
    if limit is not None and count > limit:
        raise DecodeLimitError(
            f"{what} has {count:,} {kind}; the limit is {limit:,} (checked before decoding)",
            path=source,
        )
    budget = state.limits.budget_bytes
    if budget is not None and state.spent + nbytes > budget:
        raise DecodeLimitError(
            f"decoding the {what} needs about {nbytes / MB:,.0f} MB; the per-request "
            f"memory budget is {budget / MB:,.0f} MB ({state.spent / MB:,.0f} MB used by "
            "the other parts)",
            path=source,
        )
    state.spent += nbytes


def npy_header(fh: BinaryIO) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of a ``.npy`` stream from its header only (the stream is left after it);
    ValueError when it is no ``.npy`` header."""
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        return tuple(int(n) for n in shape), np.dtype(dtype)
    except Exception as exc:  # numpy parses the header as Python literals: SyntaxError & co.
        raise ValueError(f"not a readable .npy header ({type(exc).__name__})") from None


def load_npy(fh: BinaryIO, check: Callable[[tuple[int, ...], np.dtype], None]) -> np.ndarray:
    """A ``.npy`` stream read after ``check(shape, dtype)`` has seen its header (the decode
    limits of the caller's kind raise there, before the array is allocated)."""
    shape, dtype = npy_header(fh)
    check(shape, dtype)
    fh.seek(0)
    return np.load(fh, allow_pickle=False)
