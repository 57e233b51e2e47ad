"""Normalization layers of the residual stream: LayerNorm and RMSNorm.

- LayerNorm (Ba, Kiros & Hinton 2016, "Layer Normalization"): ``y = (x - mean(x)) / sqrt(var(x) + eps) * g + b``,
  statistics over the feature dimension; used by GPT-2.
- RMSNorm (Zhang & Sennrich 2019, "Root Mean Square Layer Normalization"): ``y = x / sqrt(mean(x^2) + eps) * g``,
  no centring and no bias; used by Llama, Mistral and Qwen2. Statistics are computed in float32 and the result is
  cast back before the gain is applied, the order Hugging Face's ``LlamaRMSNorm`` uses (a float64 input is
  rounded to float32 too, as there, so float64 logits equal a float64 transformers model's). The forward calls
  ``torch.nn.functional.rms_norm`` (torch >= 2.4), one fused call with the same float32 arithmetic (bit for bit
  on CPU, measured); the formula is written out in :meth:`RMSNorm.reference`. LayerNorm calls
  ``torch.nn.functional.layer_norm``, the kernel behind ``nn.LayerNorm`` and so behind transformers' GPT-2: it
  computes in float32 (float64 for a float64 input) and rounds once. The formula, written out in
  :meth:`LayerNorm.reference`, gives the same values up to the order of float additions (the fused kernel sums
  the mean and variance in another order: ~half the float32 outputs and ~1 in 20,000 bfloat16 outputs differ in
  their last bit), so the forward calls the kernel, bit for bit what the transformers model computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_HAS_RMS_NORM = hasattr(F, "rms_norm")  # torch >= 2.4
_HALF = (torch.bfloat16, torch.float16)


class RMSNorm(nn.Module):
    """Root-mean-square normalization over the last dimension. x: (..., C) -> (..., C)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``weight * (x / sqrt(mean(x^2) + eps))``, statistics in float32 (see :meth:`reference`)."""
        if not _HAS_RMS_NORM:
            return self.reference(x)
        w = self.weight
        if x.dtype == torch.float32 and w.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), w, self.eps)  # one call; the gain inside is exact here
        if x.dtype == torch.float64:
            # HF's LlamaRMSNorm casts *every* input to float32 (float64 too) and casts the result back: a float64
            # rms_norm here would differ from a float64 transformers model by ~1e-6 in the logits
            return w * F.rms_norm(x.float(), (x.shape[-1],), None, self.eps).to(x.dtype)
        # half inputs: rms_norm computes in float32 and rounds once, then the gain multiplies in x's dtype
        return w * F.rms_norm(x, (x.shape[-1],), None, self.eps)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The formula written out (Hugging Face's ``LlamaRMSNorm`` order): what :meth:`forward` computes."""
        dtype = x.dtype
        x32 = x.float()
        inv_rms = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * (x32 * inv_rms).to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class LayerNorm(nn.Module):
    """Layer normalization over the last dimension, with gain and (optional) bias. x: (..., C) -> (..., C)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / sqrt(var + eps) * weight + bias`` over the last dimension, as ``nn.LayerNorm``."""
        w = self.weight
        if w.dtype == x.dtype or (w.dtype == torch.float32 and x.dtype in _HALF):
            return F.layer_norm(x, (x.shape[-1],), w, self.bias, self.eps)
        # parameters in another precision than the input (which torch's kernel refuses): the written-out formula
        return self.reference(x)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The formula written out: what :meth:`forward` computes, up to the order of float additions."""
        dtype = x.dtype
        # half inputs are computed in float32; float64 stays float64 (as torch's layer_norm, and GPT-2 in
        # transformers: a float32 round trip would cost float64 models 8 digits)
        acc = torch.promote_types(dtype, torch.float32)
        xa = x.to(acc)
        mean = xa.mean(dim=-1, keepdim=True)
        var = (xa - mean).pow(2).mean(dim=-1, keepdim=True)  # biased variance, as in the paper
        y = (xa - mean) * torch.rsqrt(var + self.eps) * self.weight.to(acc)
        if self.bias is not None:
            y = y + self.bias.to(acc)
        return y.to(dtype)  # one rounding at the end, as torch's fused layer_norm

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, bias={self.bias is not None}"


def build_norm(kind: str, dim: int, eps: float) -> nn.Module:
    """``"rmsnorm"`` -> :class:`RMSNorm`, ``"layernorm"`` -> :class:`LayerNorm`."""
    if kind == "rmsnorm":
        return RMSNorm(dim, eps)
    if kind == "layernorm":
        return LayerNorm(dim, eps)
    raise ValueError(f"norm must be 'rmsnorm' or 'layernorm', got {kind!r}")
