"""Occlusion through the whole model: how much the target probability drops when one part of
the processed input is hidden. It needs nothing of the model but ``model(inputs, present)``, so
it explains classical learners (their features are recomputed from the occluded input, so the
attribution lands on pixels, leads and time, spectrogram regions, words, record fields) and
ensembles as well as deep models.

* image (2D / 3D): square / cubic patches set to 0 (the training mean after normalisation);
* audio: blocks of feature rows x frames set to 0 (standardised mean);
* signal: each lead's time segments set to 0;
* text (word / WordPiece ids): each token left out (leave-one-token-out);
* tabular: each numeric field set to 0 (the training mean after scaling), each categorical
  field to the unseen category.

The value of a part is p(target | input) - p(target | input with the part hidden): positive
parts support the target class.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from medmodal.errors import ConfigError
from medmodal.explain.base import METHODS, Attribution, modality_type
from medmodal.explain.forward import Item, expand, target_prob
from medmodal.predictor import Predictor

TYPES = ("image", "audio", "signal", "text", "tabular")
BATCH = 128


class OcclusionMap:
    """Occlusion attributions of one modality of one Predictor."""

    def __init__(self, predictor: Predictor, modality: str, grid: int, segments: int) -> None:
        self.p, self.m = predictor, modality
        self.mtype = modality_type(predictor, modality, "feature_occlusion")
        self.grid, self.segments = grid, segments

    @torch.no_grad()
    def score(self, item: Item, x: Any, target: int) -> np.ndarray:
        """Target probability with modality ``m``'s input replaced by each row of ``x``."""
        n = int((x["input_ids"] if isinstance(x, dict) and "input_ids" in x else
                 next(iter(x.values())) if isinstance(x, dict) else x).shape[0])  # fmt: skip
        out = []
        for s in range(0, n, BATCH):
            rows = _rows(x, slice(s, s + BATCH))
            b = int(_first(rows).shape[0])
            inputs = {k: (rows if k == self.m else expand(v, b)) for k, v in item.inputs.items()}
            present = {k: v.expand(b) for k, v in item.present.items()}
            out.append(
                target_prob(self.p.model(inputs, present).float(), self.p.label_map.task, target)
            )
        return torch.cat(out).double().cpu().numpy()

    def explain(self, item: Item, target: int) -> Attribution:
        t0 = time.perf_counter()
        x = item.inputs[self.m]
        base = float(self.score(item, x, target)[0])
        att = {"image": self._image, "audio": self._blocks, "signal": self._signal,
               "text": self._text, "tabular": self._tabular}[self.mtype](item, x, target, base)  # fmt: skip
        att.info.update(p_target=base, method_about="probability drop when the part is hidden")
        att.seconds = time.perf_counter() - t0
        return att

    # -- per modality type -----------------------------------------------------------------
    def _masks(self, shape: tuple[int, ...], steps: tuple[int, ...]) -> list[tuple[slice, ...]]:
        """Cells of a grid over ``shape`` with ``steps`` cells per axis."""
        edges = [
            np.linspace(0, n, min(k, n) + 1).astype(int) for n, k in zip(shape, steps, strict=True)
        ]
        cells = np.stack(np.meshgrid(*[np.arange(len(e) - 1) for e in edges], indexing="ij"), -1)
        return [tuple(slice(edges[a][i], edges[a][i + 1]) for a, i in enumerate(c))
                for c in cells.reshape(-1, len(shape))]  # fmt: skip

    def _occlude(self, item: Item, x: torch.Tensor, target: int, base: float,
                 cells: list[tuple[slice, ...]], lead: int = 1) -> np.ndarray:  # fmt: skip
        """Hide each cell (over the trailing axes of ``x[0]``, all leading channels) -> map."""
        variants = x.expand(len(cells), *x.shape[1:]).clone()
        pre = (slice(None),) * lead
        for i, c in enumerate(cells):
            variants[(i, *pre, *c)] = 0.0
        drop = base - self.score(item, variants, target)
        out = np.zeros(x.shape[1 + lead :])
        for d, c in zip(drop, cells, strict=True):
            out[c] = d
        return out

    def _image(self, item: Item, x: torch.Tensor, target: int, base: float) -> Attribution:
        spatial = tuple(x.shape[2:])
        cells = self._masks(spatial, (self.grid,) * len(spatial))
        values = self._occlude(item, x, target, base, cells)
        kind = "volume" if len(spatial) == 3 else "image"
        return Attribution(self.m, "feature_occlusion", kind, values, background=x[0].cpu().numpy())

    def _blocks(self, item: Item, x: torch.Tensor, target: int, base: float) -> Attribution:
        cells = self._masks(tuple(x.shape[2:]), (8, self.segments))
        values = self._occlude(item, x, target, base, cells)
        return Attribution(self.m, "feature_occlusion", "spectrogram", values,
                           background=x[0].cpu().numpy())  # fmt: skip

    def _signal(self, item: Item, x: torch.Tensor, target: int, base: float) -> Attribution:
        cells = self._masks(tuple(x.shape[1:]), (x.shape[1], self.segments))
        values = self._occlude(item, x, target, base, cells, lead=0)
        info = self.p.processors[self.m].info()
        return Attribution(self.m, "feature_occlusion", "signal", values,
                           background=x[0].cpu().numpy(), info={"fs": info.get("fs")})  # fmt: skip

    def _text(self, item: Item, x: Any, target: int, base: float) -> Attribution:
        if not isinstance(x, dict) or "input_ids" not in x:
            raise ConfigError(
                f"feature_occlusion leaves words out of word / WordPiece ids; modality "
                f"{self.m!r} is a sentence embedding (use method occlusion on a deep model)"
            )
        ids, mask = x["input_ids"][0], x["attention_mask"][0]
        pos = torch.nonzero(mask).flatten().tolist()
        if not pos:
            return Attribution(self.m, "feature_occlusion", "tokens", np.zeros(0), [])
        variants = []
        for j in pos:
            keep = [i for i in range(len(ids)) if i != j]
            pad = torch.tensor([0], dtype=ids.dtype)
            variants.append({"input_ids": torch.cat([ids[keep], pad]),
                             "attention_mask": torch.cat([mask[keep], pad.to(mask.dtype)])})  # fmt: skip
        batch = {k: torch.stack([v[k] for v in variants]) for k in ("input_ids", "attention_mask")}
        drop = base - self.score(item, batch, target)
        words = _token_labels(self.p.processors[self.m], ids[pos])
        return Attribution(self.m, "feature_occlusion", "tokens", drop, words)

    def _tabular(
        self, item: Item, x: dict[str, torch.Tensor], target: int, base: float
    ) -> Attribution:
        info = self.p.processors[self.m].info()
        num, cat = x["numeric"], x["categorical"]
        names = list(info["feature_names"])
        variants = []
        for j in range(num.shape[1]):
            v = num.clone()
            v[0, j] = 0.0
            variants.append({"numeric": v[0], "categorical": cat[0]})
        for j in range(cat.shape[1]):
            c = cat.clone()
            c[0, j] = 0  # the unseen category
            variants.append({"numeric": num[0], "categorical": c[0]})
        batch = {k: torch.stack([v[k] for v in variants]) for k in ("numeric", "categorical")}
        drop = base - self.score(item, batch, target)
        return Attribution(self.m, "feature_occlusion", "features", drop, names[: len(drop)])


def _token_labels(processor: Any, ids: torch.Tensor) -> list[str]:
    if getattr(processor, "tokenizer", None) == "wordpiece":
        from medmodal.data.preprocess.text import load_minilm_tokenizer

        return list(
            load_minilm_tokenizer(processor.opts.model_path).convert_ids_to_tokens(ids.tolist())
        )
    vocab = getattr(processor, "vocab_", None) or []
    return [vocab[i] if i < len(vocab) else str(i) for i in ids.tolist()]


def _rows(x: Any, s: slice) -> Any:
    return {k: v[s] for k, v in x.items()} if isinstance(x, dict) else x[s]


def _first(x: Any) -> torch.Tensor:
    return next(iter(x.values())) if isinstance(x, dict) else x


@METHODS.register("feature_occlusion")
def feature_occlusion(
    predictor: Predictor, modality: str | None, grid: int = 8, segments: int = 16
) -> OcclusionMap:
    """Occlusion through the whole model: image patches, spectrogram blocks, lead segments,
    left-out words, record fields (any model: classical learners and ensembles too)."""
    if modality is None:
        raise ConfigError("method 'feature_occlusion' explains one modality")
    mtype = modality_type(predictor, modality, "feature_occlusion")
    if mtype not in TYPES:
        raise ConfigError(f"method 'feature_occlusion' does not fit {mtype} modalities")
    if grid < 1 or segments < 1:
        raise ConfigError("feature_occlusion: grid and segments must be at least 1")
    return OcclusionMap(predictor, modality, grid, segments)
