"""Tabular encoders: ``mlp`` (default) and ``ft_transformer``.

Both take the tabular processor's output ``{"numeric": (B, n_numeric) float,
"categorical": (B, n_cat) long}`` and ``info`` with ``n_numeric`` and ``cardinalities``
(embedding table sizes, including the reserved unknown / missing indices). Either part may be
zero-width. No BatchNorm anywhere: a batch may hold a single present row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from medmodal.models.encoders.base import register_encoder

TabularInput = Mapping[str, torch.Tensor] | torch.Tensor


def embedding_dim(cardinality: int, max_dim: int = 16) -> int:
    """Default embedding width for a categorical column: ``min(max_dim, (card + 1) // 2)``."""
    return max(1, min(max_dim, (cardinality + 1) // 2))


def _split(x: TabularInput) -> tuple[torch.Tensor, torch.Tensor]:
    """``(numeric, categorical)`` from the processor's dict (a bare tensor = numeric only)."""
    if isinstance(x, torch.Tensor):
        return x, x.new_zeros((x.shape[0], 0), dtype=torch.long)
    num, cat = x.get("numeric"), x.get("categorical")
    if num is None and cat is None:
        raise ValueError("tabular input needs a 'numeric' and/or 'categorical' tensor")
    if num is None:
        assert cat is not None
        num = torch.zeros((cat.shape[0], 0), device=cat.device)
    if cat is None:
        cat = torch.zeros((num.shape[0], 0), dtype=torch.long, device=num.device)
    return num, cat


def _check_info(n_numeric: int, cardinalities: Sequence[int]) -> None:
    if n_numeric < 0 or any(int(c) < 1 for c in cardinalities):
        raise ValueError(f"bad tabular info: n_numeric={n_numeric}, cardinalities={cardinalities}")
    if n_numeric == 0 and not cardinalities:
        raise ValueError("a tabular encoder needs at least one numeric or categorical feature")


class TabularMLP(nn.Module):
    """Categorical embeddings ++ numeric features -> [Linear, LayerNorm, GELU, Dropout] x N."""

    def __init__(
        self,
        n_numeric: int,
        cardinalities: Sequence[int],
        hidden: Sequence[int] = (128, 64),
        dropout: float = 0.1,
        embed_dim: int | Sequence[int] | None = None,
        max_embed_dim: int = 16,
    ) -> None:
        super().__init__()
        _check_info(n_numeric, cardinalities)
        self.n_numeric = int(n_numeric)
        dims = _embed_dims(cardinalities, embed_dim, max_embed_dim)
        self.embeddings = nn.ModuleList(
            nn.Embedding(int(c), d) for c, d in zip(cardinalities, dims, strict=True)
        )
        layers: list[nn.Module] = []
        width = self.n_numeric + sum(dims)
        for h in hidden:
            layers += [
                nn.Linear(width, int(h)),
                nn.LayerNorm(int(h)),
                nn.GELU(),
                nn.Dropout(dropout),
            ]
            width = int(h)
        self.mlp = nn.Sequential(*layers)
        self.out_dim = width

    def forward(self, x: TabularInput) -> torch.Tensor:
        num, cat = _split(x)
        parts = [num.float()] + [emb(cat[:, j]) for j, emb in enumerate(self.embeddings)]
        return self.mlp(torch.cat(parts, dim=1))


def _embed_dims(
    cardinalities: Sequence[int], embed_dim: int | Sequence[int] | None, max_dim: int
) -> list[int]:
    if embed_dim is None:
        return [embedding_dim(int(c), max_dim) for c in cardinalities]
    if isinstance(embed_dim, int):
        return [embed_dim] * len(cardinalities)
    dims = [int(d) for d in embed_dim]
    if len(dims) != len(cardinalities):
        raise ValueError(f"embed_dim has {len(dims)} entries for {len(cardinalities)} columns")
    return dims


def _uniform_param(shape: tuple[int, int], bound: float) -> nn.Parameter | None:
    """A U(-bound, bound) parameter, or None for a zero-row shape (no such features)."""
    if shape[0] == 0:
        return None
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


class FeatureTokenizer(nn.Module):
    """One token per feature: numeric ``x_j * W_j + b_j``, categorical ``E_j[x_j] + b_j``."""

    def __init__(self, n_numeric: int, cardinalities: Sequence[int], d_token: int) -> None:
        super().__init__()
        self.n_numeric = int(n_numeric)
        self.n_categorical = len(cardinalities)
        bound = 1 / math.sqrt(d_token)  # the paper's uniform init
        self.num_weight = _uniform_param((self.n_numeric, d_token), bound)
        self.num_bias = _uniform_param((self.n_numeric, d_token), bound)
        self.cat_bias = _uniform_param((self.n_categorical, d_token), bound)
        self.cat_embed: nn.Embedding | None = None
        if self.n_categorical:
            self.cat_embed = nn.Embedding(sum(int(c) for c in cardinalities), d_token)
            nn.init.uniform_(self.cat_embed.weight, -bound, bound)
        offsets = torch.tensor([0, *list(cardinalities)[:-1]], dtype=torch.long).cumsum(0)
        self.register_buffer("cat_offsets", offsets[: self.n_categorical], persistent=False)

    @property
    def n_tokens(self) -> int:
        return self.n_numeric + self.n_categorical

    def forward(self, num: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        """``(B, n_numeric + n_cat, d_token)``."""
        tokens = []
        if self.num_weight is not None and self.num_bias is not None:
            tokens.append(num.float().unsqueeze(-1) * self.num_weight + self.num_bias)
        if self.cat_embed is not None and self.cat_bias is not None:
            tokens.append(self.cat_embed(cat + self.cat_offsets) + self.cat_bias)
        return torch.cat(tokens, dim=1)


class FTTransformer(nn.Module):
    """FT-Transformer (Gorishniy et al., 2021): feature tokens + [CLS] -> pre-norm Transformer.

    The [CLS] output goes through LayerNorm + ReLU (the paper's head minus its Linear), so
    ``out_dim == d_token``. Differences from the paper: GELU feed-forward instead of ReGLU and the
    first block keeps its first LayerNorm (``nn.TransformerEncoderLayer`` as is).
    """

    def __init__(
        self,
        n_numeric: int,
        cardinalities: Sequence[int],
        d_token: int = 64,
        n_layers: int = 3,
        n_heads: int = 4,
        ffn_factor: float = 4 / 3,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        _check_info(n_numeric, cardinalities)
        if d_token % n_heads:
            raise ValueError(f"d_token ({d_token}) must be divisible by n_heads ({n_heads})")
        self.tokenizer = FeatureTokenizer(n_numeric, cardinalities, d_token)
        bound = 1 / math.sqrt(d_token)
        self.cls = nn.Parameter(torch.empty(1, 1, d_token).uniform_(-bound, bound))
        layer = nn.TransformerEncoderLayer(
            d_model=d_token,
            nhead=n_heads,
            dim_feedforward=max(1, int(round(d_token * ffn_factor))),
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        for block in self.transformer.layers:  # the clones start identical: draw each anew
            _reset_block(block)
        self.norm = nn.LayerNorm(d_token)
        self.act = nn.ReLU()
        self.out_dim = int(d_token)

    def forward(self, x: TabularInput) -> torch.Tensor:
        num, cat = _split(x)
        tokens = self.tokenizer(num, cat)
        cls = self.cls.expand(tokens.shape[0], -1, -1)
        h = self.transformer(torch.cat([cls, tokens], dim=1))
        return self.act(self.norm(h[:, 0]))


def _reset_block(block: nn.TransformerEncoderLayer) -> None:
    """Fresh default init of a cloned block's attention and feed-forward weights."""
    block.self_attn._reset_parameters()
    block.linear1.reset_parameters()
    block.linear2.reset_parameters()


def _info(info: Mapping[str, Any]) -> tuple[int, list[int]]:
    return int(info.get("n_numeric", 0)), [int(c) for c in info.get("cardinalities", [])]


@register_encoder("mlp", modalities=("tabular",), default=True)
def mlp(
    info: Mapping[str, Any],
    hidden: Sequence[int] = (128, 64),
    dropout: float = 0.1,
    embed_dim: int | Sequence[int] | None = None,
    max_embed_dim: int = 16,
) -> nn.Module:
    """MLP over numeric features + categorical embeddings (hidden=[128, 64], LayerNorm, GELU)."""
    n_numeric, cards = _info(info)
    return TabularMLP(n_numeric, cards, hidden, dropout, embed_dim, max_embed_dim)


@register_encoder("ft_transformer", modalities=("tabular",))
def ft_transformer(
    info: Mapping[str, Any],
    d_token: int = 64,
    n_layers: int = 3,
    n_heads: int = 4,
    ffn_factor: float = 4 / 3,
    dropout: float = 0.1,
) -> nn.Module:
    """FT-Transformer (Gorishniy et al. 2021): per-feature tokens, [CLS], Transformer."""
    n_numeric, cards = _info(info)
    return FTTransformer(n_numeric, cards, d_token, n_layers, n_heads, ffn_factor, dropout)
