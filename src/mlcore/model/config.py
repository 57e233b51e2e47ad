"""The decoder's hyper-parameters, in one dataclass (the shape of nanoGPT's ``GPTConfig``).

One ``TransformerConfig`` describes every decoder mlcore builds: GPT-2 style (LayerNorm, GELU MLP, learned
positions, biases everywhere) and Llama style (RMSNorm, SwiGLU, RoPE, no biases, GQA), plus the knobs in between
(ALiBi, sliding-window attention, Q/K/V bias as in Qwen2, tied or untied embeddings).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

NORMS = ("rmsnorm", "layernorm")
MLPS = ("swiglu", "gelu")
POSITIONS = ("rope", "learned", "alibi", "none")
# Each name is one formula with its own float roundings: the three spellings of GELU's tanh approximation
# ("gelu_tanh" written out, "gelu_pytorch_tanh" torch's fused kernel, "gelu_fast") and the two of exact GELU
# ("gelu" fused, "gelu_python" written out) agree only up to the last bits, so each is kept apart.
ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "gelu_pytorch_tanh", "gelu_fast", "gelu_python", "relu", "quick_gelu",
               "relu2", "relu6", "leaky_relu", "tanh", "sigmoid", "mish")
ATTN_BACKENDS = ("naive", "flash", "torch")
LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclass
class TransformerConfig:
    """Hyper-parameters of a decoder-only transformer.

    Defaults describe a small Llama-style model. ``n_kv_heads`` < ``n_heads`` gives GQA (1 gives MQA);
    ``d_ff`` defaults to ``4 * d_model`` for the GELU MLP and to ``8/3 * d_model`` rounded up to a multiple
    of 64 for SwiGLU (keeping the parameter count of the 4x GELU MLP, as in the Llama paper).

    RoPE: ``rope_theta`` is the base; ``rope_scaling`` is a Hugging Face style dict (``{"rope_type": "linear" |
    "dynamic" | "yarn" | "llama3" | "longrope", "factor": ..., ...}``); ``rope_max_position_embeddings`` is what HF
    calls
    ``config.max_position_embeddings`` for the RoPE formulas (defaults to ``max_seq_len``; it differs only for
    dynamic NTK scaling, whose model runs past the length it was trained at).

    ``sliding_window`` limits every layer's attention to the last ``sliding_window`` keys (Mistral), unless
    ``layer_types`` (one ``"full_attention"`` / ``"sliding_attention"`` per layer, as in transformers' Qwen2
    config) says which layers slide.

    ``attn_backend`` picks the attention kernel of :class:`mlcore.attention.MultiHeadAttention`: ``"naive"``
    (the written-out formula), ``"flash"`` (mlcore's tiled online softmax) or ``"torch"`` (PyTorch SDPA).
    """

    vocab_size: int = 4096
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    head_dim: int | None = None
    d_ff: int | None = None
    max_seq_len: int = 512
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    mlp: str = "swiglu"
    activation: str = "silu"
    mlp_bias: bool = False
    position: str = "rope"
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    rope_interleaved: bool = False
    partial_rotary_factor: float = 1.0
    rope_max_position_embeddings: int | None = None
    qkv_bias: bool = False
    out_bias: bool = False
    sliding_window: int | None = None
    layer_types: list[str] | None = None
    tie_embeddings: bool = True
    dropout: float = 0.0
    attn_backend: str = "naive"
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"TransformerConfig.{name} must be a positive int, got {value!r}")
        for name in ("n_kv_heads", "head_dim", "d_ff", "sliding_window", "rope_max_position_embeddings"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ValueError(f"TransformerConfig.{name} must be a positive int or None, got {value!r}")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads != 0:
            raise ValueError(
                f"TransformerConfig.n_kv_heads must divide n_heads={self.n_heads}, got {self.n_kv_heads}"
            )
        if self.head_dim is None:
            if self.d_model % self.n_heads != 0:
                raise ValueError(
                    f"TransformerConfig.d_model={self.d_model} is not a multiple of n_heads={self.n_heads}; "
                    "pass head_dim explicitly"
                )
            self.head_dim = self.d_model // self.n_heads
        if self.d_ff is None:
            if self.mlp == "swiglu":
                self.d_ff = 64 * -(-int(8 * self.d_model / 3) // 64)
            else:
                self.d_ff = 4 * self.d_model
        for name, allowed in (("norm", NORMS), ("mlp", MLPS), ("position", POSITIONS),
                              ("activation", ACTIVATIONS), ("attn_backend", ATTN_BACKENDS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"TransformerConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.layer_types is not None:
            self.layer_types = list(self.layer_types)
            if len(self.layer_types) != self.n_layers or not set(self.layer_types) <= set(LAYER_TYPES):
                raise ValueError(f"TransformerConfig.layer_types must list one of {LAYER_TYPES} per layer "
                                 f"(n_layers={self.n_layers}), got {self.layer_types}")
            if "sliding_attention" in self.layer_types and self.sliding_window is None:
                raise ValueError("TransformerConfig.layer_types has sliding_attention layers but sliding_window=None")
        if self.rope_scaling is not None and self.position != "rope":
            raise ValueError(f"TransformerConfig.rope_scaling needs position='rope', got position={self.position!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TransformerConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def d_attn(self) -> int:
        """Width of the concatenated query heads, ``n_heads * head_dim``."""
        return self.n_heads * self.head_dim

    def layer_window(self, layer_idx: int) -> int | None:
        """The sliding window of layer ``layer_idx`` (None = full causal attention)."""
        if self.layer_types is not None and self.layer_types[layer_idx] != "sliding_attention":
            return None
        return self.sliding_window

    @property
    def d_kv(self) -> int:
        """Width of the concatenated key (or value) heads, ``n_kv_heads * head_dim``."""
        return self.n_kv_heads * self.head_dim

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``TransformerConfig.from_dict(c.to_dict()) == c``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransformerConfig:
        """Build from ``to_dict()`` output, refusing keys this version does not know."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"TransformerConfig.from_dict: unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)
