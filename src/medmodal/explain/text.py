"""Word-level attributions for notes.

* Word / WordPiece encoders that declare their token embedding (bigru, bilstm, minilm;
  ``EncoderCapabilities.token_embedding``): Integrated Gradients on the token embeddings (Captum's
  layer IG; baseline: padding tokens, [CLS] / [SEP] kept), summed over the embedding
  width per token; WordPiece pieces (``##...``) are summed into their word.
* Any text encoder, and the only choice for frozen sentence embeddings (``minilm_embed``):
  leave-one-word-out occlusion. The note is re-encoded through the processor without each word
  in turn; a word's value is the target score with the note minus the score without the word.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from medmodal.data.preprocess.text import TextProcessor, load_minilm_tokenizer
from medmodal.errors import ConfigError
from medmodal.explain.base import (
    METHODS,
    Attribution,
    capabilities,
    encoder_name,
    offered_by,
    require_type,
)
from medmodal.explain.forward import Item, ModelScore
from medmodal.explain.integrate import captum_attr
from medmodal.predictor import Predictor


def _tokens(ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"input_ids": ids, "attention_mask": mask}


class TokenIG:
    """Integrated Gradients over token embeddings, per word. ``gradients()``: a context in which
    gradients flow through the encoder (a frozen MiniLM turns them off in its forward)."""

    def __init__(
        self,
        predictor: Predictor,
        modality: str,
        layer: nn.Module,
        gradients: Callable[[], AbstractContextManager[None]],
        steps: int,
        batch: int,
    ) -> None:
        self.predictor, self.modality, self.layer = predictor, modality, layer
        self.gradients, self.steps, self.batch = gradients, steps, batch
        self.proc = cast(TextProcessor, predictor.processors[modality])

    def _baseline(self, ids: torch.Tensor) -> torch.Tensor:
        keep = torch.zeros_like(ids, dtype=torch.bool)
        if self.proc.tokenizer == "wordpiece":
            keep = torch.isin(ids, torch.tensor(self.proc._special_ids(), device=ids.device))
        return torch.where(keep, ids, torch.full_like(ids, self.proc.pad_id))

    def explain(self, item: Item, target: int) -> Attribution:
        t0 = time.perf_counter()
        p, m = self.predictor, self.modality
        x = item.inputs[m]
        n = max(int(x["attention_mask"].sum()), 1)
        ids, mask = x["input_ids"][:, :n], x["attention_mask"][:, :n]
        score = ModelScore(p.model, item, m, p.label_map.task, target, assemble=_tokens)
        lig = captum_attr().LayerIntegratedGradients(score, self.layer)
        with self.gradients(), torch.enable_grad():
            attr, delta = lig.attribute(
                ids,
                baselines=self._baseline(ids),
                additional_forward_args=(mask,),
                n_steps=self.steps,
                internal_batch_size=self.batch,
                return_convergence_delta=True,
            )
        per_token = attr.detach().sum(-1)[0].cpu().numpy()
        words, values = self._words(item, ids[0].tolist(), per_token)
        info = {"convergence_delta": float(delta.abs().max()), "steps": self.steps}
        return Attribution(
            m, "integrated_gradients", "tokens", values, words, info=info,
            seconds=time.perf_counter() - t0,
        )  # fmt: skip

    def _words(self, item: Item, ids: list[int], v: np.ndarray) -> tuple[list[str], np.ndarray]:
        if self.proc.tokenizer == "word":
            tokens = list(item.raw[self.modality])[: len(ids)]
            return tokens, v[: len(tokens)]
        return merge_wordpieces(self.proc, ids, v)


def merge_wordpieces(
    proc: TextProcessor, ids: list[int], values: np.ndarray
) -> tuple[list[str], np.ndarray]:
    """WordPiece tokens joined into words (``##`` continues a word), values summed; special
    tokens dropped."""
    tok = load_minilm_tokenizer(proc.opts.model_path)
    special = set(tok.all_special_ids)
    words: list[str] = []
    out: list[float] = []
    for pos, (i, piece) in enumerate(zip(ids, tok.convert_ids_to_tokens(ids), strict=True)):
        if i in special:
            continue
        if piece.startswith("##") and words:
            words[-1] += piece[2:]
            out[-1] += float(values[pos])
        else:
            words.append(piece)
            out.append(float(values[pos]))
    return words, np.asarray(out)


def token_ig(predictor: Predictor, modality: str, steps: int, batch: int) -> TokenIG:
    """Token IG for a word / WordPiece encoder declaring its token embedding; frozen sentence
    embeddings: ConfigError."""
    tokenizer = predictor.processors[modality].info().get("tokenizer")
    caps = capabilities(predictor, modality)
    if tokenizer not in ("word", "wordpiece") or caps.token_embedding is None:
        raise ConfigError(
            f"method 'integrated_gradients' does not fit encoder "
            f"{encoder_name(predictor, modality)!r} of modality {modality!r} (tokenizer "
            f"{tokenizer}): it needs token embeddings "
            f"({offered_by(predictor, modality, lambda c: c.token_embedding)}); frozen sentence "
            "embeddings are explained by occlusion"
        )
    encoder, opener = predictor.model.encoders[modality], caps.gradients
    gradients = (lambda: opener(encoder)) if opener is not None else contextlib.nullcontext
    return TokenIG(predictor, modality, caps.token_embedding(encoder), gradients, steps, batch)


def stack_inputs(xs: list[Any]) -> Any:
    """Processed single-sample inputs (tensors or dicts of tensors) stacked into a batch."""
    if isinstance(xs[0], dict):
        return {k: stack_inputs([x[k] for x in xs]) for k in xs[0]}
    return torch.stack([torch.as_tensor(x) for x in xs])


class LeaveOneWordOut:
    """Leave-one-word-out occlusion through the processor (see the module doc)."""

    def __init__(self, predictor: Predictor, modality: str, max_words: int, batch: int) -> None:
        self.predictor, self.modality = predictor, modality
        self.max_words, self.batch = max_words, batch
        self.proc = cast(TextProcessor, predictor.processors[modality])

    def explain(self, item: Item, target: int) -> Attribution:
        t0 = time.perf_counter()
        m = self.modality
        text = self.proc.note_text(item.row, item.root) or ""
        every = text.split(" ") if text.strip() else []
        words = every[: self.max_words]
        variants = [text] + [" ".join(every[:j] + every[j + 1 :]) for j in range(len(words))]
        device = item.present[m].device
        xs = [self.proc.transform(self.proc.encode(v)) for v in variants]
        scores = []
        for s in range(0, len(xs), self.batch):
            chunk = stack_inputs(xs[s : s + self.batch])
            scores.append(self._score(item, target, chunk, device))
        full, *rest = torch.cat(scores).tolist()
        values = np.asarray([full - r for r in rest], dtype=float)
        info = {"scale": "target logit", "full_score": full, "words_total": len(every)}
        return Attribution(
            m, "occlusion", "tokens", values, words, info=info,
            seconds=time.perf_counter() - t0,
        )  # fmt: skip

    @torch.no_grad()
    def _score(self, item: Item, target: int, chunk: Any, device: torch.device) -> torch.Tensor:
        p, m = self.predictor, self.modality
        if isinstance(chunk, dict):
            chunk = {k: v.to(device) for k, v in chunk.items()}
            score = ModelScore(p.model, item, m, p.label_map.task, target, assemble=_tokens)
            return score(chunk["input_ids"], chunk["attention_mask"]).cpu()
        score = ModelScore(p.model, item, m, p.label_map.task, target)
        return score(chunk.to(device)).cpu()


@METHODS.register("occlusion")
def occlusion(
    predictor: Predictor, modality: str | None, max_words: int = 256, batch: int = 64
) -> LeaveOneWordOut:
    """Leave-one-word-out occlusion of a note, re-encoded through the processor."""
    require_type(predictor, modality, "occlusion", ("text",))
    assert modality is not None
    if max_words < 1 or batch < 1:
        raise ValueError(f"max_words and batch must be positive (got {max_words}, {batch})")
    return LeaveOneWordOut(predictor, modality, max_words, batch)
