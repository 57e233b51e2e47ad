"""The position-wise feed-forward network of a transformer block, in its two common forms.

- GELU MLP (Vaswani et al. 2017; GELU from Hendrycks & Gimpel 2016, used by GPT-2):
  ``MLP(x) = W_down · act(W_up · x + b_up) + b_down``, hidden width ``d_ff`` (usually ``4 · d_model``).
- SwiGLU (Shazeer 2020, "GLU Variants Improve Transformer"; used by Llama, Mistral, Qwen2):
  ``MLP(x) = W_down · (silu(W_gate · x) ⊙ W_up · x)``: a gated unit, three matrices instead of two.

Layer names follow Llama (``gate_proj``, ``up_proj``, ``down_proj``) so that Hugging Face checkpoints and
LoRA ``target_modules`` map one to one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mlcore.attention.fused_linear import LinearFusion


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation (GPT-2's ``gelu_new``): ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def gelu_tanh_fused(x: torch.Tensor) -> torch.Tensor:
    """The same tanh approximation as :func:`gelu_tanh` in torch's one fused kernel
    (``F.gelu(x, approximate="tanh")``, transformers' ``gelu_pytorch_tanh``): computed in float32 for half inputs
    and rounded once, where :func:`gelu_tanh` rounds after every operation, so the two differ in the last bits
    (in ~40% of bfloat16 outputs)."""
    return F.gelu(x, approximate="tanh")


def gelu_fast(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation with the cube factored out (transformers' ``gelu_fast``):
    ``0.5 x (1 + tanh(0.7978845608 x (1 + 0.044715 x^2)))``; equal to :func:`gelu_tanh` up to rounding."""
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def gelu_erf(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU written out with ``erf`` (transformers' ``gelu_python``): ``x/2 (1 + erf(x / sqrt(2)))``, one
    rounding per operation where ``F.gelu`` computes in one kernel (they differ in the last bits)."""
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """The sigmoid approximation of GELU (CLIP's ``quick_gelu``): ``x * sigmoid(1.702 x)``."""
    return x * torch.sigmoid(1.702 * x)


def relu2(x: torch.Tensor) -> torch.Tensor:
    """Squared ReLU (So et al. 2021, "Primer"): ``relu(x)^2``."""
    return torch.square(F.relu(x))


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu": F.gelu,  # exact, erf-based
    "gelu_tanh": gelu_tanh,  # transformers' gelu_new (GPT-2), gelu_python_tanh, gelu_accurate: bit for bit
    "gelu_pytorch_tanh": gelu_tanh_fused,
    "gelu_fast": gelu_fast,
    "gelu_python": gelu_erf,
    "relu": F.relu,
    "quick_gelu": quick_gelu,
    "relu2": relu2,
    "relu6": F.relu6,
    "leaky_relu": F.leaky_relu,  # negative slope 0.01, torch's (and transformers') default
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "mish": F.mish,
}


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


class GeluMLP(nn.Module):
    """Two-layer MLP. x: (B, T, C) -> (B, T, C) through a hidden width ``d_ff``."""

    def __init__(self, d_model: int, d_ff: int, *, activation: str = "gelu_tanh", bias: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.act = get_activation(activation)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.down_proj(self.act(self.up_proj(x)))  # (B, T, d_ff) in the middle
        return self.dropout(out) if self.training and self.dropout.p > 0 else out


class SwiGLU(nn.Module):
    """Gated MLP ``down(act(gate(x)) * up(x))``. x: (B, T, C) -> (B, T, C)."""

    def __init__(self, d_model: int, d_ff: int, *, activation: str = "silu", bias: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.act = get_activation(activation)
        self.dropout = nn.Dropout(dropout)
        self.gate_up_fusion = LinearFusion()  # gate and up as one stacked matmul in eval / no-grad
        self.down_fusion = LinearFusion()  # down_proj's weight in a faster decode layout, where one exists

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stacked = self.gate_up_fusion((self.gate_proj, self.up_proj), self.training)
        if stacked is not None:  # inference: [gate | up] = x [W_gate; W_up]^T in one matmul, same values
            gate, up = stacked(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        out = self.down_fusion.run_layer(self.down_proj, self.act(gate) * up, self.training)
        return self.dropout(out) if self.training and self.dropout.p > 0 else out


def build_mlp(kind: str, d_model: int, d_ff: int, *, activation: str, bias: bool, dropout: float) -> nn.Module:
    """``"swiglu"`` -> :class:`SwiGLU`, ``"gelu"`` -> :class:`GeluMLP`."""
    if kind == "swiglu":
        return SwiGLU(d_model, d_ff, activation=activation, bias=bias, dropout=dropout)
    if kind == "gelu":
        return GeluMLP(d_model, d_ff, activation=activation, bias=bias, dropout=dropout)
    raise ValueError(f"mlp must be 'swiglu' or 'gelu', got {kind!r}")
