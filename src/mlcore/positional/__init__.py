"""Positional encodings: sinusoidal, learned, rotary (RoPE, with linear / dynamic NTK / YaRN / Llama-3 scaling), ALiBi.

* ``sinusoidal.SinusoidalEncoding`` -- Vaswani et al. (2017), added to token embeddings.
* ``learned.LearnedEncoding`` -- one trained vector per position (GPT-2).
* ``rope.RotaryEmbedding`` + ``rope.apply_rotary`` -- Su et al. (2021), rotates q and k; scalings in
  ``rope_scaling`` match transformers' ``ROPE_INIT_FUNCTIONS``.
* ``alibi.alibi_slopes`` / ``alibi.alibi_bias`` -- Press et al. (2022), a per-head linear bias on the logits.
"""

from .alibi import alibi_bias, alibi_slopes
from .learned import LearnedEncoding
from .rope import (
    RotaryEmbedding,
    apply_rotary,
    half_to_interleaved,
    interleaved_to_half,
    rotate_half,
    rotate_pairs,
)
from .rope_scaling import ROPE_TYPES, rope_inv_freq
from .sinusoidal import SinusoidalEncoding

__all__ = [
    "SinusoidalEncoding",
    "LearnedEncoding",
    "RotaryEmbedding",
    "apply_rotary",
    "rotate_half",
    "rotate_pairs",
    "interleaved_to_half",
    "half_to_interleaved",
    "rope_inv_freq",
    "ROPE_TYPES",
    "alibi_slopes",
    "alibi_bias",
]
