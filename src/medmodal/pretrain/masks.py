"""SimMIM's random masks: square (cubic) mask patches hidden at a fixed ratio, 2D or 3D.

A mask is drawn on the grid of *mask patches* (``size / mask_patch`` per axis): exactly
``ceil(ratio * cells)`` cells per image are hidden, chosen by a seeded generator. It is then
repeated to the grid of *model patches* (``size / model_patch`` per axis; the ViT's token grid,
or every pixel for a convolutional encoder), so a hidden mask patch always covers whole model
patches: the mask is aligned with the tokens it hides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from medmodal.errors import ConfigError


class MaskGenerator:
    """``gen(batch, generator) -> (B, *token_grid)`` bool, True = hidden.

    ``size``: the image's spatial size (2 or 3 entries); ``mask_patch``: side of a hidden square
    (cube) in pixels, a multiple of ``model_patch`` (the encoder's patch side; 1 for pixels) and a
    divisor of every side of ``size``; ``ratio``: the fraction of mask patches hidden, in (0, 1).
    """

    def __init__(
        self, size: Sequence[int], mask_patch: int, model_patch: int, ratio: float
    ) -> None:
        self.size = tuple(int(s) for s in size)
        if not 0 < ratio < 1:
            raise ConfigError(f"mask.ratio must be in (0, 1), got {ratio}")
        if model_patch < 1 or mask_patch < 1 or mask_patch % model_patch:
            raise ConfigError(
                f"mask.patch_size {mask_patch} must be a multiple of the encoder's patch size "
                f"{model_patch}"
            )
        bad = [s for s in self.size if s % mask_patch]
        if bad:
            raise ConfigError(
                f"mask.patch_size {mask_patch} must divide the image size {list(self.size)} "
                "(change preprocess.size or mask.patch_size)"
            )
        self.mask_patch, self.model_patch, self.ratio = mask_patch, model_patch, float(ratio)
        self.grid = tuple(s // mask_patch for s in self.size)
        self.scale = mask_patch // model_patch
        self.cells = math.prod(self.grid)
        self.hidden = min(self.cells - 1, max(1, math.ceil(self.ratio * self.cells)))

    @property
    def token_grid(self) -> tuple[int, ...]:
        return tuple(g * self.scale for g in self.grid)

    def __call__(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        scores = torch.rand(batch, self.cells, generator=generator)
        order = scores.argsort(dim=1)
        cells = torch.zeros(batch, self.cells, dtype=torch.bool)
        cells.scatter_(1, order[:, : self.hidden], True)
        mask = cells.view(batch, *self.grid)
        for axis in range(1, mask.ndim):
            mask = mask.repeat_interleave(self.scale, dim=axis)
        return mask
