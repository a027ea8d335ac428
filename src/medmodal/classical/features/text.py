"""Note features: TF-IDF of word and character n-grams of the processed tokens, or the frozen
sentence embedding the processor computed (``minilm_embed``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medmodal.classical import persist
from medmodal.classical.features.base import FeatureExtractor, as_numpy, register_features

SPECIAL = {"<pad>", "<unk>", "[PAD]", "[CLS]", "[SEP]", "[UNK]"}


def note_tokens(processor: Any, ids: torch.Tensor, mask: torch.Tensor) -> list[list[str]]:
    """Each row's tokens as words (the processor's vocabulary; WordPiece pieces joined), special
    tokens left out. Words outside the training vocabulary are not features either way."""
    rows = []
    if processor.tokenizer == "wordpiece":
        from medmodal.data.preprocess.text import load_minilm_tokenizer

        tok = load_minilm_tokenizer(processor.opts.model_path)
        for r, m in zip(ids.tolist(), mask.tolist(), strict=True):
            pieces = tok.convert_ids_to_tokens([i for i, k in zip(r, m, strict=True) if k])
            words: list[str] = []
            for p in pieces:
                if p.startswith("##") and words:
                    words[-1] += p[2:]
                elif p not in SPECIAL:
                    words.append(p)
            rows.append(words)
        return rows
    vocab = processor.vocab_
    for r, m in zip(ids.tolist(), mask.tolist(), strict=True):
        rows.append([vocab[i] for i, k in zip(r, m, strict=True) if k and vocab[i] not in SPECIAL])
    return rows


class Tfidf(FeatureExtractor):
    """TF-IDF (sublinear tf, l2) of word n-grams and, unless ``char_ngrams`` is None, of
    character n-grams inside word boundaries, each vocabulary fitted on the training notes
    (``min_df`` notes, the ``max_features`` most frequent)."""

    def __init__(self, processor: Any, word: tuple[int, int], char: tuple[int, int] | None,
                 max_features: int, min_df: int) -> None:  # fmt: skip
        self.processor = processor
        self.settings = (word, char, max_features, min_df)
        self.word_: bytes | None = None
        self.char_: bytes | None = None
        self._cache: dict[str, Any] = {}

    def _vectorizers(self) -> list[Any]:
        from sklearn.feature_extraction.text import TfidfVectorizer

        word, char, max_features, min_df = self.settings
        common = {"max_features": max_features, "min_df": min_df, "sublinear_tf": True,
                  "lowercase": False, "dtype": np.float32}  # fmt: skip
        out = [TfidfVectorizer(analyzer="word", ngram_range=word, token_pattern=r"\S+", **common)]
        if char is not None:
            out.append(TfidfVectorizer(analyzer="char_wb", ngram_range=char, **common))
        return out

    def fitted(self) -> list[Any]:
        if "v" not in self._cache:
            blobs = [b for b in (self.word_, self.char_) if b is not None]
            self._cache["v"] = [persist.loads(b, "tfidf features") for b in blobs]
        return self._cache["v"]

    def texts(self, x: dict[str, torch.Tensor]) -> list[str]:
        return [
            " ".join(t) for t in note_tokens(self.processor, x["input_ids"], x["attention_mask"])
        ]

    def fit(self, x: dict[str, torch.Tensor], present: np.ndarray) -> Tfidf:
        docs = [d for d, p in zip(self.texts(x), present, strict=True) if p]
        vecs = self._vectorizers()
        for v in vecs:
            try:
                v.fit(docs)
            except ValueError:  # every n-gram below min_df: keep them all
                v.set_params(min_df=1).fit(docs)
        self.word_ = persist.dumps(vecs[0])
        self.char_ = persist.dumps(vecs[1]) if len(vecs) > 1 else None
        self._cache = {"v": vecs}
        return self

    def transform(self, x: dict[str, torch.Tensor]) -> np.ndarray:
        return self.transform_texts(self.texts(x))

    def transform_texts(self, docs: list[str]) -> np.ndarray:
        parts = [v.transform(docs).toarray() for v in self.fitted()]
        return np.concatenate(parts, axis=1).astype(np.float32)

    def names(self) -> list[str]:
        vecs = self.fitted()
        out = [f"word:{w}" for w in vecs[0].get_feature_names_out()]
        if len(vecs) > 1:
            out += [f"char:{c}" for c in vecs[1].get_feature_names_out()]
        return out


class Embedding(FeatureExtractor):
    """The note's frozen sentence embedding (``tokenizer: minilm_embed``), as it is."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.dim = int(info["embedding_dim"])

    def transform(self, x: torch.Tensor) -> np.ndarray:
        return as_numpy(x)

    def names(self) -> list[str]:
        return [f"embedding_{k}" for k in range(self.dim)]


@register_features("tfidf", ("text",), default=True)
def tfidf(
    info: dict[str, Any],
    processor: Any,
    word_ngrams: tuple[int, int] = (1, 2),
    char_ngrams: tuple[int, int] | None = (2, 5),
    max_features: int = 5000,
    min_df: int = 2,
) -> FeatureExtractor:
    """TF-IDF of word and character n-grams (tokenizer word or wordpiece)."""
    if info.get("tokenizer") == "minilm_embed":
        raise ValueError(
            "tfidf reads tokens; this note is a minilm_embed sentence embedding: use 'embedding', "
            "or preprocess.tokenizer: word"
        )
    if max_features < 1 or min_df < 1:
        raise ValueError("max_features and min_df must be at least 1")
    return Tfidf(processor, tuple(word_ngrams), char_ngrams and tuple(char_ngrams),
                 max_features, min_df)  # fmt: skip


@register_features("embedding", ("text",))
def embedding(info: dict[str, Any], processor: Any) -> FeatureExtractor:
    """The frozen MiniLM sentence embedding (tokenizer minilm_embed)."""
    if info.get("tokenizer") != "minilm_embed":
        raise ValueError("embedding reads a minilm_embed note; use tfidf for word tokens")
    return Embedding(info)
