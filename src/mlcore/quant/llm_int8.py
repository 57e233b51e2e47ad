"""LLM.int8(): vector-wise int8 matrix multiplication with a mixed-precision decomposition of outlier features.

Dettmers, Lewis, Belkada & Zettlemoyer 2022, "LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale".

For ``Y = X W^T`` with X (N, K) activations (N tokens) and W (M, K) weights (M output channels):

1. **Vector-wise quantization.** Each row of X (a token) and each row of W (an output channel) gets its own
   absmax scale: ``c_x[n] = max_k |X[n, k]|``, ``c_w[m] = max_k |W[m, k]|`` and
   ``X8 = round(127 X / c_x)``, ``W8 = round(127 W / c_w)`` (int8, round half to even).
2. **Int8 matmul, int32 accumulate, outer-product rescale:**
   ``Y ≈ (X8 W8^T)_int32 * (c_x c_w^T) / 127^2``.
3. **Mixed-precision decomposition.** A few feature dimensions k ("outlier features") carry values far larger
   than the rest; one of them would blow up the row scale c_x and wipe out the other features. Every column k
   where some token has ``|X[n, k]| >= threshold`` (6.0 in the paper) is taken out of the int8 product and
   computed in floating point: ``Y = int8 part (other columns) + X[:, O] W[:, O]^T``.

Arithmetic details chosen to equal ``bitsandbytes.nn.Linear8bitLt(has_fp16_weights=False)`` (0.50, its
PyTorch-native CPU path), which this module is tested against:

- Weights and activations are rounded to float16 before quantization (the paper's setting; bitsandbytes casts).
- Outlier detection is on the float16 activations. The row scale c_x is the absmax of the row with the outlier
  *entries* set to zero (other entries of outlier columns still count); the int8 codes of whole outlier columns
  are zeroed, so those columns enter only through the floating-point part, in the input's own precision.
- The outlier weight columns are, by default, the int8 weights dequantized (``W8 c_w / 127``): with
  ``has_fp16_weights=False`` bitsandbytes keeps no fp16 copy. ``keep_fp_weight=True`` keeps the original weight
  (the paper's fp16 weights) and uses its columns instead: more exact, but the layer then stores both.
- Rescale: we multiply by exactly ``1 / 127^2 = 6.2000124e-05``; bitsandbytes' CPU path writes the constant as
  ``6.200124e-05`` (its CUDA kernel has ``6.200012e-5``), so its int8 part is larger by a factor 1.0000180.
  The int8 codes and scales are identical; outputs differ by that relative 1.8e-5.

Which bitsandbytes 0.50.2 code runs on CPU (checked, ``tests/quant/test_int8_bnb_exact.py``): quantization,
rescale and the outlier part are its pure-PyTorch "default" ops, not ``libbitsandbytes_cpu.so``; the int32 product
is ``torch._int_mm`` on AVX-512 CPUs, which is wrong for one input feature (K = 1) -- mlcore stays exact there.
bitsandbytes also fails on 4-D inputs (flattens only 3-D) and, in training mode on CPU, runs a weight-only
dequantize-and-matmul instead of LLM.int8(); mlcore flattens any leading dims and has no training mode.
A row of zeros: bitsandbytes scales it by 127 / 0 and casts NaN to int8 (undefined); mlcore defines codes 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Int8MixedLinear", "int8_vectorwise_quant", "int8_matmul_i32"]

_RESCALE = 1.0 / (127.0 * 127.0)  # the outer-product rescale of the int32 accumulator
_FP_CHUNK = 1024  # 1024 * 127^2 < 2^24: an fp32 dot product of 1024 int8 pairs is exact


def int8_vectorwise_quant(x: Tensor, threshold: float = 0.0) -> tuple[Tensor, Tensor, Tensor | None]:
    """Row-wise absmax int8 quantization of x (N, K), with LLM.int8()'s outlier columns held back.

    Returns ``(codes (N, K) int8, absmax (N,) float32, outlier_cols (n_o,) int64 or None)``, with
    ``codes = round(127 x / absmax)`` row by row. With ``threshold > 0`` the columns where any ``|x| >= threshold``
    are outliers: their entries are excluded from the absmax and their codes are zero in every row.
    ``outlier_cols`` is None when ``threshold`` is 0 (no decomposition). A row of zeros gets absmax 0, codes 0.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (N, K), got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    outlier_cols = None
    if threshold > 0.0:
        outliers = x.abs() >= threshold  # (N, K)
        outlier_cols = torch.nonzero(outliers.any(dim=0)).view(-1)
        x = x.masked_fill(outliers, 0.0)
    absmax = x.abs().amax(dim=1).float()  # (N,)
    inv = torch.where(absmax > 0, 127.0 / absmax, torch.zeros_like(absmax))
    codes = torch.round(x * inv.unsqueeze(1)).to(torch.int8)  # float16 * float32 -> float32, then round
    if outlier_cols is not None and outlier_cols.numel():
        codes[:, outlier_cols] = 0
    return codes, absmax, outlier_cols


def int8_matmul_i32(a: Tensor, b: Tensor) -> Tensor:
    """Exact ``a @ b^T`` of int8 a (N, K) and b (M, K), accumulated in int32 -> (N, M) int32.

    Uses ``torch._int_mm`` where torch has a fast int8 kernel for these shapes (CUDA: N > 16 and K, M multiples
    of 8); elsewhere an fp32 matmul over chunks of 1024 along K, which is exact (each partial sum is an integer
    below 2^24), with the chunks summed in int32.
    """
    if a.dtype != torch.int8 or b.dtype != torch.int8:
        raise ValueError(f"a and b must be int8, got {a.dtype} and {b.dtype}")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a (N, K) and b (M, K) must share K, got {tuple(a.shape)} and {tuple(b.shape)}")
    n, k = a.shape
    m = b.shape[0]
    if a.is_cuda and hasattr(torch, "_int_mm") and n > 16 and k % 8 == 0 and m % 8 == 0:
        return torch._int_mm(a, b.t())
    out = torch.zeros(n, m, dtype=torch.int32, device=a.device)
    for k0 in range(0, k, _FP_CHUNK):
        part = a[:, k0:k0 + _FP_CHUNK].float() @ b[:, k0:k0 + _FP_CHUNK].float().t()
        out += part.to(torch.int32)
    return out


class Int8MixedLinear(nn.Module):
    """A Linear layer run as LLM.int8(): int8 weights per output channel, int8 activations per token, outlier
    feature columns in floating point. x: (..., in_features) -> (..., out_features), in x's dtype.

    Buffers: ``weight_int8`` (out, in) int8, ``weight_absmax`` (out,) float32, ``bias`` (out,) or None and, with
    ``keep_fp_weight``, ``weight_fp`` (out, in) the original weight. Build it with :meth:`from_linear`.
    Inference only: rounding has no gradient. Runs on CPU and CUDA (``torch._int_mm`` there when shapes allow).
    """

    def __init__(self, weight_int8: Tensor, weight_absmax: Tensor, bias: Tensor | None = None, *,
                 threshold: float = 6.0, weight_fp: Tensor | None = None) -> None:
        super().__init__()
        for name, t in (("weight_int8", weight_int8), ("weight_absmax", weight_absmax)):
            if not isinstance(t, Tensor):
                raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if weight_int8.dtype != torch.int8 or weight_int8.dim() != 2:
            raise ValueError(f"weight_int8 must be a 2-D int8 tensor, got {weight_int8.dtype} "
                             f"{tuple(weight_int8.shape)}")
        out_features, in_features = weight_int8.shape
        if tuple(weight_absmax.shape) != (out_features,):
            raise ValueError(f"weight_absmax must have shape ({out_features},), got {tuple(weight_absmax.shape)}")
        if bias is not None and tuple(bias.shape) != (out_features,):
            raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
        if weight_fp is not None and tuple(weight_fp.shape) != (out_features, in_features):
            raise ValueError(f"weight_fp must have shape {(out_features, in_features)}, got {tuple(weight_fp.shape)}")
        # bool is an int, but threshold=True is a mistake; a string would fail the comparison with a TypeError
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0.0:
            raise ValueError(f"threshold must be a number >= 0 (0 = no outlier decomposition), got {threshold!r}")
        self.in_features, self.out_features, self.threshold = in_features, out_features, float(threshold)
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("weight_absmax", weight_absmax.float())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.register_buffer("weight_fp", None if weight_fp is None else weight_fp.detach().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, threshold: float = 6.0, keep_fp_weight: bool = False
                    ) -> Int8MixedLinear:
        """Quantize ``linear.weight`` (rounded to float16 first) row-wise to int8."""
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach()
        if not torch.isfinite(w).all():
            raise ValueError("linear.weight contains NaN or Inf; LLM.int8() needs finite weights")
        w16 = w.to(torch.float16)
        # weights are rounded to float16 first (as bitsandbytes does): a finite weight beyond its range would
        # become inf there and turn its row's absmax to inf and the row's outputs to NaN
        if not torch.isfinite(w16).all():
            limit = torch.finfo(torch.float16).max
            raise ValueError(f"linear.weight has values beyond float16's range (|w| <= {limit:g}, got max |w| "
                             f"{w.abs().max().item():g}); LLM.int8() rounds weights to float16")
        codes, absmax, _ = int8_vectorwise_quant(w16)
        return cls(codes, absmax, linear.bias, threshold=threshold, weight_fp=w if keep_fp_weight else None)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """(out, in): ``W8 * c_w / 127``, the weight the int8 product stands for."""
        return (self.weight_int8.float() * self.weight_absmax.unsqueeze(1) * (1.0 / 127.0)).to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x must end in in_features={self.in_features}, got shape {tuple(x.shape)}")
        if not x.dtype.is_floating_point:
            raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # (N, K)
        codes, absmax, outlier_cols = int8_vectorwise_quant(x2.to(torch.float16), self.threshold)
        acc = int8_matmul_i32(codes, self.weight_int8)  # (N, M) int32
        out = acc * (absmax.unsqueeze(1) * self.weight_absmax.unsqueeze(0)) * _RESCALE  # fp32
        if self.bias is not None:
            out = out + self.bias.to(x.dtype)
        out = out.to(x.dtype)
        if outlier_cols is not None and outlier_cols.numel():
            if self.weight_fp is not None:
                w_o = self.weight_fp[:, outlier_cols]  # (M, n_o), the original columns
            else:
                w_o = self.weight_int8[:, outlier_cols].float() * self.weight_absmax.unsqueeze(1) * (1.0 / 127.0)
            out = torch.addmm(out, x2[:, outlier_cols], w_o.to(x.dtype).t())  # + (N, n_o) @ (n_o, M), x's dtype
        return out.reshape(*lead, self.out_features)

    def reference_forward(self, x: Tensor) -> Tensor:
        """The floating-point layer this one approximates: ``x W^T + b`` with the stored original weight."""
        if self.weight_fp is None:
            raise ValueError("reference_forward needs keep_fp_weight=True (no original weight is stored)")
        return F.linear(x, self.weight_fp.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, threshold={self.threshold}, "
                f"bias={self.bias is not None}, keep_fp_weight={self.weight_fp is not None}")
