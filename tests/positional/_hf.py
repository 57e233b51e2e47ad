"""Tiny transformers configs for the positional tests (no weights are built)."""

from __future__ import annotations

from typing import Any

from transformers import LlamaConfig

HEAD_DIM = 16
MAX_POS = 64


def llama_config(rope_parameters: dict[str, Any] | None = None, *, head_dim: int = HEAD_DIM,
                 max_pos: int = MAX_POS, theta: float = 10000.0) -> LlamaConfig:
    """A LlamaConfig with 4 heads of ``head_dim`` and the given v5 ``rope_parameters`` (copied)."""
    params = {"rope_type": "default", **(rope_parameters or {}), "rope_theta": theta}
    return LlamaConfig(
        hidden_size=4 * head_dim, num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim,
        intermediate_size=32, num_hidden_layers=1, vocab_size=32, max_position_embeddings=max_pos,
        rope_parameters=dict(params),
    )


def scaling_of(rope_parameters: dict[str, Any]) -> dict[str, Any] | None:
    """mlcore's ``scaling`` dict for the same parameters (``None`` for default)."""
    if rope_parameters.get("rope_type", "default") == "default":
        return None
    return dict(rope_parameters)
