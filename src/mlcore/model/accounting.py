"""Whiteboard arithmetic for a decoder: parameters, FLOPs and KV-cache memory from the config alone.

References: Kaplan et al. 2020, "Scaling Laws for Neural Language Models", Table 1 (forward FLOPs per token
``C_forward ≈ 2N + 2 n_layer n_ctx d_attn``); Hoffmann et al. 2022 (Chinchilla), training compute ``≈ 6N`` per
token (forward 2N + backward 4N); Pope et al. 2022, "Efficiently Scaling Transformer Inference" (KV-cache size
``2 · n_layers · n_kv_heads · head_dim · bytes`` per token).

Conventions used here:
- ``N`` in the FLOP formulas is the number of parameters that take part in a matrix multiply: every Linear
  weight, *including* the output projection to the vocabulary, *excluding* the embedding tables (a lookup costs
  no multiply-adds). Norm gains and biases are left out of ``2N`` (they cost O(C) per token, not O(C^2)).
- One multiply-add = 2 FLOPs.
- The attention term counts ``Q K^T`` and ``softmax(.) V``: ``2 · T · d_attn`` FLOPs each, per layer, for a
  query that sees ``T`` keys, i.e. ``2 · n_layers · T · d_attn · 2`` per token. For prefill this module counts
  the dense ``T x T`` score matrix, as kernels that do not skip the masked half compute it (and as
  ``torch.utils.flop_counter`` counts it); a sliding window caps ``T`` for decode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mlcore.model.config import TransformerConfig


@dataclass(frozen=True)
class ParameterCount:
    """Parameters by component; ``total`` is what ``sum(p.numel() for p in model.parameters())`` gives."""

    embedding: int
    position_embedding: int
    attention: int
    mlp: int
    norms: int
    lm_head: int

    @property
    def total(self) -> int:
        return (self.embedding + self.position_embedding + self.attention + self.mlp + self.norms
                + self.lm_head)

    @property
    def non_embedding(self) -> int:
        """Kaplan's N: everything but the token and position tables (and the tied head that shares them)."""
        return self.attention + self.mlp + self.norms + self.lm_head

    def as_dict(self) -> dict[str, int]:
        return {"embedding": self.embedding, "position_embedding": self.position_embedding,
                "attention": self.attention, "mlp": self.mlp, "norms": self.norms, "lm_head": self.lm_head,
                "total": self.total}


def _check_count(name: str, value: object, low: int = 1) -> None:
    """ValueError naming the argument unless ``value`` is an int >= ``low`` (a float, bool or negative count would
    give a fractional or negative FLOP / byte figure without complaint)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be a {'positive' if low == 1 else 'non-negative'} int, got {value!r}")


def _check_config(config: object) -> None:
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")


def _norm_params(config: TransformerConfig) -> int:
    return config.d_model * (2 if config.norm == "layernorm" else 1)


def attention_params_per_layer(config: TransformerConfig) -> int:
    """q, k, v, o projections: ``C·d_attn + 2·C·d_kv + d_attn·C`` weights plus optional biases."""
    c = config
    weights = c.d_model * c.d_attn + 2 * c.d_model * c.d_kv + c.d_attn * c.d_model
    biases = (c.d_attn + 2 * c.d_kv if c.qkv_bias else 0) + (c.d_model if c.out_bias else 0)
    return weights + biases


def mlp_params_per_layer(config: TransformerConfig) -> int:
    """SwiGLU: 3 matrices ``C x d_ff``; GELU MLP: 2. Plus optional biases."""
    c = config
    n_mats = 3 if c.mlp == "swiglu" else 2
    weights = n_mats * c.d_model * c.d_ff
    biases = ((n_mats - 1) * c.d_ff + c.d_model) if c.mlp_bias else 0
    return weights + biases


def count_parameters(config: TransformerConfig) -> ParameterCount:
    """Parameter count by component, from the config alone."""
    _check_config(config)
    c = config
    return ParameterCount(
        embedding=c.vocab_size * c.d_model,
        position_embedding=c.max_seq_len * c.d_model if c.position == "learned" else 0,
        attention=c.n_layers * attention_params_per_layer(c),
        mlp=c.n_layers * mlp_params_per_layer(c),
        norms=(2 * c.n_layers + 1) * _norm_params(c),
        lm_head=0 if c.tie_embeddings else c.vocab_size * c.d_model,
    )


def matmul_params(config: TransformerConfig) -> int:
    """``N`` of the FLOP formulas: Linear weights of all blocks plus the vocabulary projection (tied or not)."""
    c = config
    per_layer = (c.d_model * c.d_attn + 2 * c.d_model * c.d_kv + c.d_attn * c.d_model
                 + (3 if c.mlp == "swiglu" else 2) * c.d_model * c.d_ff)
    return c.n_layers * per_layer + c.vocab_size * c.d_model


def attention_flops_per_token(config: TransformerConfig, context_len: int) -> int:
    """``2 · n_layers · T · d_attn · 2``: scores ``Q K^T`` and the weighted sum ``A V`` over ``T`` keys."""
    _check_config(config)
    _check_count("context_len", context_len)
    return 2 * config.n_layers * context_len * config.d_attn * 2


def flops_per_token(config: TransformerConfig, context_len: int) -> int:
    """Forward FLOPs for one token that attends to ``context_len`` keys: ``2N + 4 · n_layers · T · d_attn``."""
    _check_config(config)
    _check_count("context_len", context_len)
    return 2 * matmul_params(config) + attention_flops_per_token(config, context_len)


def prefill_flops(config: TransformerConfig, seq_len: int, batch: int = 1) -> int:
    """Forward FLOPs of a prompt of ``seq_len`` tokens: every token computes a dense row of ``seq_len`` scores."""
    _check_count("seq_len", seq_len)
    _check_count("batch", batch)
    return batch * seq_len * flops_per_token(config, seq_len)


def decode_flops_per_token(config: TransformerConfig, context_len: int, batch: int = 1) -> int:
    """FLOPs of one decode step whose new token sees ``context_len`` keys (cache + itself), capped at the
    window in sliding-window layers."""
    _check_config(config)
    _check_count("context_len", context_len)
    _check_count("batch", batch)
    c = config
    keys = [min(context_len, w) if (w := c.layer_window(i)) else context_len for i in range(c.n_layers)]
    return batch * (2 * matmul_params(c) + sum(2 * t * c.d_attn * 2 for t in keys))


def training_flops(config: TransformerConfig, n_tokens: int, *, context_len: int | None = None) -> int:
    """Training compute: ``6 · N`` per token (forward 2N, backward 4N), as in Kaplan / Chinchilla.

    With ``context_len`` the attention term is added too, three times over (its backward, like a matmul's,
    costs twice its forward).
    """
    _check_config(config)
    _check_count("n_tokens", n_tokens, low=0)
    flops = 6 * matmul_params(config) * n_tokens
    if context_len is not None:
        flops += 3 * attention_flops_per_token(config, context_len) * n_tokens
    return flops


# Names accepted for a dtype besides ``torch.<name>`` itself: the short forms configs and CLIs use.
DTYPE_ALIASES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float": torch.float32, "fp16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "fp64": torch.float64, "double": torch.float64, "int8": torch.int8,
    "uint8": torch.uint8, "fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}


def resolve_dtype(dtype: torch.dtype | str, name: str = "dtype") -> torch.dtype:
    """A ``torch.dtype`` from itself or a name: ``"float16"``, ``"torch.bfloat16"``, ``"bf16"``, ``"int8"``, ...

    Raises ``ValueError`` naming the argument for anything else.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key in DTYPE_ALIASES:
            return DTYPE_ALIASES[key]
        found = getattr(torch, key, None)
        if isinstance(found, torch.dtype):
            return found
    raise ValueError(f"{name} must be a torch.dtype or a dtype name such as 'float16', 'bf16' or 'int8', "
                     f"got {dtype!r}")


def kv_cache_bytes(config: TransformerConfig, batch: int, seq_len: int,
                   dtype: torch.dtype | str = torch.float16) -> int:
    """Bytes of a full KV cache: ``2 (K and V) · n_layers · batch · n_kv_heads · seq_len · head_dim · itemsize``.

    ``dtype`` is a ``torch.dtype`` or its name (``"float16"``, ``"bf16"``, ``"int8"``, ...). For an int8 cache
    this counts the codes only; the scales a quantized cache keeps beside them are extra.
    """
    _check_config(config)
    _check_count("batch", batch)
    _check_count("seq_len", seq_len)
    itemsize = resolve_dtype(dtype).itemsize
    return 2 * config.n_layers * batch * config.n_kv_heads * seq_len * config.head_dim * itemsize


def summary(config: TransformerConfig, *, context_len: int = 2048,
            dtype: torch.dtype | str = torch.float16) -> dict:
    """One row of a whiteboard table: parameters, FLOPs per token and KV bytes per token."""
    dtype = resolve_dtype(dtype)
    p = count_parameters(config)
    return {
        "params": p.total,
        "non_embedding_params": p.non_embedding,
        "flops_per_token": flops_per_token(config, context_len),
        "attention_share": attention_flops_per_token(config, context_len) / flops_per_token(config, context_len),
        "kv_bytes_per_token": kv_cache_bytes(config, 1, 1, dtype),
        "weights_bytes": p.total * dtype.itemsize,
    }
