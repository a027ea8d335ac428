"""Text encoders: a bidirectional GRU / LSTM, the pretrained MiniLM, an MLP on MiniLM embeddings.

``info`` comes from the text processor: ``tokenizer`` (``word`` | ``wordpiece`` |
``minilm_embed``), ``vocab_size``, ``max_len``, ``pad_id`` and, for
``minilm_embed``, ``embedding_dim``. Token inputs are dicts
``{"input_ids": (B, T), "attention_mask": (B, T)}``, right-padded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from medmodal.data.preprocess.text import MINILM_DIM, masked_mean, minilm_path
from medmodal.errors import ConfigError
from medmodal.models.encoders.base import EncoderCapabilities, register_encoder

TEXT = ("text",)
TokenBatch = dict[str, torch.Tensor] | torch.Tensor


def _ids_and_mask(x: TokenBatch, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of a token batch; a bare id tensor is masked by ``pad_id``."""
    if isinstance(x, torch.Tensor):
        return x.long(), (x != pad_id).long()
    ids = x["input_ids"].long()
    mask = x.get("attention_mask")
    return ids, (ids != pad_id).long() if mask is None else mask.long()


def _trim(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the padding columns no row of the batch uses."""
    width = max(int(mask.sum(1).max()), 1)
    return ids[:, :width], mask[:, :width]


def _require(info: dict[str, Any], encoder: str, *tokenizers: str) -> None:
    got = info.get("tokenizer")
    if got not in tokenizers:
        raise ConfigError(
            f"encoder {encoder!r} needs text preprocessed with tokenizer "
            f"{' or '.join(tokenizers)}, got {got!r} (set preprocess.tokenizer)"
        )


class RNNTextEncoder(nn.Module):
    """Embedding -> bidirectional GRU/LSTM (packed, so padding is never read) ->
    masked mean and max over time, concatenated -> optional Linear to ``out_dim``.

    ONNX has no packed sequences, so under ``torch.onnx.export`` the same weights run
    :meth:`padded_states`: each direction as its own one-directional RNN over the padded batch,
    the backward one over each sequence reversed within its own length (an index gather). At the
    positions the pooling reads (those under the mask), the states equal the packed ones.
    """

    def __init__(
        self,
        vocab_size: int,
        pad_id: int = 0,
        embed_dim: int = 128,
        hidden: int = 128,
        layers: int = 1,
        rnn: str = "gru",
        dropout: float = 0.1,
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        if rnn not in ("gru", "lstm"):
            raise ConfigError(f"rnn must be 'gru' or 'lstm', not {rnn!r}")
        self.pad_id = int(pad_id)
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=self.pad_id)
        cell = nn.GRU if rnn == "gru" else nn.LSTM
        self.rnn = cell(
            embed_dim,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        pooled = 4 * hidden  # (mean, max) x (forward, backward)
        self.proj: nn.Module = nn.Identity() if out_dim is None else nn.Linear(pooled, out_dim)
        self.out_dim = pooled if out_dim is None else int(out_dim)

    def forward(self, x: TokenBatch) -> torch.Tensor:
        exporting = torch.onnx.is_in_onnx_export()
        ids, mask = _ids_and_mask(x, self.pad_id)
        if not exporting:  # the trimmed width would be traced as a constant
            ids, mask = _trim(ids, mask)
        emb = self.dropout(self.embedding(ids))
        states = self.padded_states(emb, mask) if exporting else self.packed_states(emb, mask)
        pooled = torch.cat(_mean_max(states, mask), dim=-1)
        return self.proj(self.dropout(pooled))

    def packed_states(self, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, 2H) states of the packed bidirectional RNN (zeros at padding)."""
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(emb, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        states, _ = pad_packed_sequence(out, batch_first=True, total_length=emb.shape[1])
        return states

    def padded_states(self, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, 2H) states without packing: equal to :meth:`packed_states` under the mask
        (other positions hold values the pooling never reads)."""
        lengths = mask.sum(1, keepdim=True).clamp(min=1)
        pos = torch.ones_like(mask).cumsum(1) - 1
        flip = torch.where(pos < lengths, lengths - 1 - pos, pos)  # an involution
        flip = flip.unsqueeze(-1)
        x = emb
        for layer in range(self.rnn.num_layers):
            forward, backward = _directions(self.rnn, layer)
            fwd, _ = forward(x)
            rev = torch.gather(x, 1, flip.expand(-1, -1, x.shape[-1]))
            bwd, _ = backward(rev)
            bwd = torch.gather(bwd, 1, flip.expand(-1, -1, bwd.shape[-1]))
            x = torch.cat([fwd, bwd], dim=-1)
            if layer < self.rnn.num_layers - 1 and self.training:
                x = nn.functional.dropout(x, self.rnn.dropout)
        return x


def _directions(rnn: nn.RNNBase, layer: int) -> tuple[nn.RNNBase, nn.RNNBase]:
    """One layer of a bidirectional GRU/LSTM as two one-directional RNNs sharing its weights."""
    out = []
    for suffix in ("", "_reverse"):
        one = type(rnn)(
            rnn.input_size if layer == 0 else 2 * rnn.hidden_size,
            rnn.hidden_size,
            batch_first=True,
            bias=rnn.bias,
        )
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            if hasattr(rnn, f"{name}_l{layer}{suffix}"):
                setattr(one, f"{name}_l0", getattr(rnn, f"{name}_l{layer}{suffix}"))
        out.append(one.to(rnn.weight_ih_l0.device))
    return out[0], out[1]


def _mean_max(states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked mean and max over time of (B, T, D) states; an all-padding row gives zeros."""
    keep = mask.bool().unsqueeze(-1)
    mean = masked_mean(states, mask)
    mx = states.masked_fill(~keep, float("-inf")).amax(1)
    return mean, torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))


def _rnn(info: dict[str, Any], name: str, rnn: str, **kwargs: Any) -> nn.Module:
    _require(info, name, "word", "wordpiece")
    vocab = info.get("vocab_size")
    if not vocab:
        raise ConfigError(
            f"encoder {name!r}: the text processor has no vocabulary yet (fit it first)"
        )
    return RNNTextEncoder(int(vocab), pad_id=int(info.get("pad_id", 0)), rnn=rnn, **kwargs)


RNN_CAPS = EncoderCapabilities(token_embedding=lambda m: m.embedding)


@register_encoder("bigru", TEXT, default=True, capabilities=RNN_CAPS)
def bigru(
    info: dict[str, Any],
    embed_dim: int = 128,
    hidden: int = 128,
    layers: int = 1,
    rnn: str = "gru",
    dropout: float = 0.1,
    out_dim: int | None = None,
) -> nn.Module:
    """Embedding + bidirectional GRU (``rnn: lstm`` for an LSTM), masked mean+max pooling."""
    kw = dict(embed_dim=embed_dim, hidden=hidden, layers=layers, dropout=dropout, out_dim=out_dim)
    return _rnn(info, "bigru", rnn, **kw)


@register_encoder("bilstm", TEXT, capabilities=RNN_CAPS)
def bilstm(
    info: dict[str, Any],
    embed_dim: int = 128,
    hidden: int = 128,
    layers: int = 1,
    dropout: float = 0.1,
    out_dim: int | None = None,
) -> nn.Module:
    """Embedding + bidirectional LSTM, masked mean+max pooling."""
    kw = dict(embed_dim=embed_dim, hidden=hidden, layers=layers, dropout=dropout, out_dim=out_dim)
    return _rnn(info, "bilstm", "lstm", **kw)


class MiniLMEncoder(nn.Module):
    """all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide): token states mean-pooled under the mask.

    ``freeze=True``: no parameter is trainable and the transformer stays in eval mode
    (no dropout) even when the surrounding model trains; ``freeze=False`` fine-tunes it.
    """

    def __init__(self, model_path: str, freeze: bool = True, normalize: bool = False) -> None:
        super().__init__()
        from transformers import AutoModel

        self.bert = AutoModel.from_pretrained(model_path, local_files_only=True)
        self.freeze = bool(freeze)
        self.normalize = bool(normalize)
        self.pad_id = int(self.bert.config.pad_token_id or 0)
        self.out_dim = int(self.bert.config.hidden_size)
        if self.freeze:
            self.bert.requires_grad_(False)
            self.bert.eval()

    def train(self, mode: bool = True) -> MiniLMEncoder:
        super().train(mode)
        if self.freeze:
            self.bert.eval()
        return self

    @contextmanager
    def gradients_through(self) -> Iterator[None]:
        """Within the block, gradients flow through a frozen MiniLM (for attributions; its
        weights stay fixed: nothing is stepped, and the transformer stays in eval mode)."""
        frozen, self.freeze = self.freeze, False
        try:
            yield
        finally:
            self.freeze = frozen

    def forward(self, x: TokenBatch) -> torch.Tensor:
        ids, mask = _ids_and_mask(x, self.pad_id)
        if not torch.onnx.is_in_onnx_export():  # the trimmed width would be traced as a constant
            ids, mask = _trim(ids, mask)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            states = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
            out = masked_mean(states, mask)
        return nn.functional.normalize(out, dim=-1) if self.normalize else out


MINILM_CAPS = EncoderCapabilities(
    token_embedding=lambda m: m.bert.embeddings.word_embeddings,
    gradients=MiniLMEncoder.gradients_through,
)


@register_encoder("minilm", TEXT, capabilities=MINILM_CAPS)
def minilm(
    info: dict[str, Any],
    freeze: bool = True,
    normalize: bool = False,
    model_path: str | None = None,
) -> nn.Module:
    """Pretrained all-MiniLM-L6-v2 (offline), mean pooling; frozen unless ``freeze: false``."""
    _require(info, "minilm", "wordpiece")
    path = minilm_path(model_path or info.get("model_path"))
    return MiniLMEncoder(str(path), freeze=freeze, normalize=normalize)


class EmbeddingMLP(nn.Module):
    """LayerNorm -> Linear -> GELU -> Dropout on a fixed sentence embedding."""

    def __init__(self, in_dim: int, out_dim: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim), nn.GELU(), nn.Dropout(dropout)
        )
        self.out_dim = int(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float())


EMBEDDING_CAPS = EncoderCapabilities(
    notes={"token_embedding": "frozen sentence embeddings: explained by occlusion"}
)


@register_encoder("embedding_mlp", TEXT, capabilities=EMBEDDING_CAPS)
def embedding_mlp(info: dict[str, Any], out_dim: int = 128, dropout: float = 0.1) -> nn.Module:
    """MLP on precomputed MiniLM sentence embeddings (``tokenizer: minilm_embed``)."""
    _require(info, "embedding_mlp", "minilm_embed")
    return EmbeddingMLP(
        int(info.get("embedding_dim", MINILM_DIM)), out_dim=out_dim, dropout=dropout
    )
