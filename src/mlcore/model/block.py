"""One pre-norm transformer block (Radford et al. 2019, GPT-2; Xiong et al. 2020, "On Layer Normalization in
the Transformer Architecture"):

    x = x + Attention(Norm(x))
    x = x + MLP(Norm(x))

The residual stream ``x`` (B, T, C) is only ever *added to*; each sub-layer reads a normalized copy of it.
Attention and positions come from :mod:`mlcore.attention` and :mod:`mlcore.positional`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mlcore.attention import AttentionInputs, MultiHeadAttention
from mlcore.model.config import TransformerConfig
from mlcore.model.mlp import build_mlp
from mlcore.model.norm import build_norm


class Block(nn.Module):
    """Pre-norm decoder block: attention sub-layer then MLP sub-layer, each with a residual connection."""

    def __init__(self, config: TransformerConfig, layer_idx: int, rope: nn.Module | None = None) -> None:
        super().__init__()
        c = config
        self.layer_idx = layer_idx
        self.attn_norm = build_norm(c.norm, c.d_model, c.norm_eps)
        self.attn = MultiHeadAttention(
            c.d_model, c.n_heads, n_kv_heads=c.n_kv_heads, head_dim=c.head_dim, qkv_bias=c.qkv_bias,
            out_bias=c.out_bias, dropout=c.dropout, rope=rope, alibi=c.position == "alibi",
            sliding_window=c.layer_window(layer_idx), causal=True, backend=c.attn_backend,
        )
        self.mlp_norm = build_norm(c.norm, c.d_model, c.norm_eps)
        self.mlp = build_mlp(c.mlp, c.d_model, c.d_ff, activation=c.activation, bias=c.mlp_bias, dropout=c.dropout)
        self.resid_drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, *, inputs: AttentionInputs, cache: Any = None) -> torch.Tensor:
        """x: (B, T, C) -> (B, T, C). ``inputs``: the forward's shared positions, RoPE tables and key indices."""
        h = self.attn(self.attn_norm(x), inputs=inputs, cache=cache, layer_idx=self.layer_idx)
        if self.training and self.resid_drop.p > 0:  # (eval, or p = 0: dropout is the identity, skip the call)
            h = self.resid_drop(h)
        x = x + h
        x = x + self.mlp(self.mlp_norm(x))
        return x
