"""Attention fusion: a CLS token attends over modality tokens with a small Transformer."""

from __future__ import annotations

import torch
from torch import nn

from medmodal.fusion.base import FUSIONS, Fusion, FusionOutput, stack_mask
from medmodal.fusion.pooling import projections, zero_absent


@FUSIONS.register("attention")
class AttentionFusion(Fusion):
    """Transformer over modality tokens with a CLS token; absent modalities masked.

    Modality tokens (projection + learned type embedding) after a learned CLS token.

    A pre-norm ``nn.TransformerEncoder`` runs with absent modalities as padding
    (``src_key_padding_mask``; the CLS token is never masked, so a row with nothing
    present still gives a finite output). Returns the LayerNorm'd CLS output.
    Nested tensors are disabled so padded and unpadded batches follow the same path.
    """

    ignores_absent = True

    def __init__(
        self,
        in_dims: dict[str, int],
        n_outputs: int,
        task: str,
        dim: int = 128,
        layers: int = 2,
        heads: int = 4,
        dim_feedforward: int | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(in_dims, n_outputs, task)
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.proj = projections(in_dims, dim)
        self.type_emb = nn.Parameter(torch.randn(len(in_dims), dim) * 0.02)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim,
            heads,
            dim_feedforward=dim_feedforward or 2 * dim,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False
        )
        self.out_dim = dim

    def _tokens(
        self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1+M, dim) tokens and (B, 1+M) padding mask (True = ignore)."""
        toks = torch.stack(
            [self.proj[m](zero_absent(embeddings[m], present[m])) for m in self.modalities], dim=1
        )
        toks = toks + self.type_emb.to(toks.dtype)
        batch = toks.shape[0]
        x = torch.cat([self.cls.to(toks.dtype).expand(batch, -1, -1), toks], dim=1)
        absent = ~stack_mask(present, self.modalities).bool()
        pad = torch.cat([torch.zeros_like(absent[:, :1]), absent], dim=1)
        return x, pad

    def forward(
        self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
    ) -> FusionOutput:
        x, pad = self._tokens(embeddings, present)
        return FusionOutput(self.encoder(x, src_key_padding_mask=pad)[:, 0], present)

    def modality_weights(
        self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """(B, M) attention of CLS to each modality in the last layer, averaged over heads.

        CLS's attention to itself is left out and the rest renormalised, so the
        weights sum to 1 over present modalities (absent: 0; none present: all 0).
        Call in eval mode for explanations (in train mode earlier layers use dropout).
        """
        x, pad = self._tokens(embeddings, present)
        layers = self.encoder.layers
        for layer in layers[:-1]:
            x = layer(x, src_key_padding_mask=pad)
        last = layers[-1]
        h = last.norm1(x) if last.norm_first else x
        attn = last.self_attn
        was_training = attn.training
        attn.train(False)  # weights before attention dropout
        try:
            _, w = attn(h, h, h, key_padding_mask=pad, need_weights=True, average_attn_weights=True)
        finally:
            attn.train(was_training)
        w = w[:, 0, 1:].masked_fill(pad[:, 1:], 0.0)  # (B, M)
        return w / w.sum(1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
