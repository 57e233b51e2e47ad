"""A batch-1 linear layer written as row dot products, for a ``torch.compile``d decode step on a CPU.

Decoding one token multiplies a single row ``x (1, in)`` by every weight matrix ``W (out, in)``:

    y_o = sum_i x_i W_oi (+ b_o)        for every output o: one dot product per weight row

A library GEMV (MKL's sgemv, oneDNN's packed bf16 matmul) is tuned for large matrices; on a small model's
512-1536 wide matrices it streams the weights well below the machine's read bandwidth. Written as an
element-wise product and a sum over ``in`` (:func:`row_dot_linear`), the same arithmetic becomes one reduction
that inductor generates in C++ itself: each row is read once, contiguously, with wide vector loads, and the
product is never stored (the multiply is fused into the sum). Measured on this project's 2-core EPYC, one
thread, the 27M Llama's 33 decode matmuls (99 MB fp32):

    float32   MKL (best layout) 11.4 GB/s   ->  row dots 17.9 GB/s
    bfloat16  oneDNN packed      8.8 GB/s   ->  row dots 14.8 GB/s (products and sum in float32)
    int8      torch's int8 GEMV  8.0 GB/s   ->  row dots 11.4 GB/s (codes converted inside the sum; 2 threads:
                                                11.2 -> 17.1 GB/s)

A second layout serves the same step faster where the output count allows it: :func:`tiled_weight` stores R
rows (one 64-byte cache line per column) as a contiguous ``(in, R)`` tile, and :func:`tiled_row_dot_linear`
reduces each tile into R outputs with one vector accumulator, ``y[t*R + r] = sum_i x_i tiles[t, i, r]``: no
horizontal sum per row, and long contiguous runs (27M model, same thread: 1.12-1.16x the row dots' rate).

Eagerly the same expression would materialise the (out, in) product, so it is used only while tracing for
``torch.compile`` (:func:`use_row_dots`), on a CPU, for a single float32 / bfloat16 row; every other case keeps
``F.linear``. The result is the same dot products summed in another order: float32 rounding level, and for
bfloat16 one rounding of the float32 sum, as oneDNN does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["row_dot_linear", "use_row_dots", "traced_single_row", "RowDotLinear", "tile_rows", "tiled_weight",
           "tiled_row_dot_linear", "realized"]

_DTYPES = (torch.float32, torch.bfloat16)


def traced_single_row(x: Tensor) -> bool:
    """True inside a traced graph for a single float32 / bfloat16 CPU row ``x (..., in)`` (shapes are static
    there, so this is decided once per trace)."""
    return (torch.compiler.is_compiling() and x.device.type == "cpu" and x.dtype in _DTYPES
            and x.numel() == x.shape[-1])


def use_row_dots(x: Tensor, weight: Tensor) -> bool:
    """True when ``F.linear(x, weight)`` is a case :func:`row_dot_linear` serves: :func:`traced_single_row`, with
    a CPU weight of ``x``'s dtype."""
    return traced_single_row(x) and weight.device.type == "cpu" and weight.dtype == x.dtype


def row_dot_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, scales: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)`` as row dot products: x (..., in) with one row, weight (out, in) -> (..., out).

    ``y_o = scales_o * sum_i x_i W_oi (+ b_o)``, accumulated in float32, then cast to ``x``'s dtype. ``weight`` may
    hold int8 codes with per-row ``scales`` (out,): the arithmetic of torch's ``_weight_int8pack_mm``, with the
    codes converted to float inside the reduction (never a dequantized copy)."""
    y = (x.unsqueeze(-2).float() * weight.float()).sum(-1)  # (..., 1, in) * (out, in) -> sum -> (..., out)
    if scales is not None:
        y = y * scales.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def tile_rows(dtype: torch.dtype) -> int:
    """Rows per tile of :func:`tiled_weight`: one 64-byte cache line of a weight column (16 float32, 32 bf16)."""
    return 64 // dtype.itemsize


def tiled_weight(weight: Tensor) -> Tensor | None:
    """``weight`` (out, in) as ``(out / R, in, R)`` tiles, R = :func:`tile_rows`: tile ``t`` holds rows
    ``t*R .. t*R + R - 1`` column by column, ``tiles[t, i, r] = weight[t*R + r, i]``. None when ``out`` is not a
    multiple of R or the weight is not a float32 / bfloat16 CPU tensor (then row dots read ``weight`` itself).

    Why: in a batch-1 step each tile is one contiguous run of ``in * 64`` bytes, reduced into one vector of R
    outputs (``tiled_row_dot_linear``), with no per-row horizontal sum; on this project's 2-core EPYC (one
    thread) inductor's kernel for it reads the 27M Llama's 33 matrices 1.12-1.16x faster than the row dots on
    the row-major weight, float32 and bfloat16 alike (the 512-wide rows are where row dots lose most)."""
    if weight.device.type != "cpu" or weight.dtype not in _DTYPES or weight.dim() != 2:
        return None
    out, inp = weight.shape
    r = tile_rows(weight.dtype)
    if out % r:
        return None
    return weight.detach().reshape(out // r, r, inp).transpose(1, 2).contiguous()


def tiled_row_dot_linear(x: Tensor, tiles: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, W, bias)`` for x (..., in) with one row and W given as :func:`tiled_weight` tiles
    (out / R, in, R) -> (..., out): ``y[t*R + r] = sum_i x_i tiles[t, i, r] (+ b)``, accumulated in float32, cast
    to ``x``'s dtype (the same dot products as :func:`row_dot_linear`, summed in another order)."""
    n, inp, r = tiles.shape
    y = (x.reshape(*x.shape[:-1], 1, inp, 1).float() * tiles.float()).sum(-2)  # (..., n, R)
    y = y.reshape(*x.shape[:-1], n * r)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def realized(x: Tensor) -> Tensor:
    """``x`` itself, computed once into a buffer in a traced graph: inductor realizes the input of an
    ``as_strided`` view. A tiled layer's graph keeps inductor's default fusion (see ``inference/compiled.py``),
    which would inline the producer of ``x`` (RMSNorm, SiLU(gate) * up) into the GEMV and recompute it once per
    tile of R rows; computed once instead, the 27M Llama's float32 step ran 1.13-1.16x faster per token (bf16,
    with half as many tiles: 1.00-1.05x; paired A/B, one thread)."""
    return x.as_strided(x.shape, x.stride())


class RowDotLinear:
    """Several linear layers that read the same input, called as one: ``x -> [x W_1^T + b_1 | x W_2^T + b_2 | ...]``.

    In a traced single-row CPU step each layer is a :func:`row_dot_linear` over its own weight, or a
    :func:`tiled_row_dot_linear` where ``tiles`` holds that layer's :func:`tiled_weight` (kept current by the
    caller, ``attention/fused_linear.LinearFusion``); otherwise ``fallback`` (a stacked copy's call) or one
    ``F.linear`` per layer, concatenated.
    """

    __slots__ = ("weights", "biases", "fallback", "tiles")

    def __init__(self, weights: Sequence[Tensor], biases: Sequence[Tensor | None],
                 fallback: Callable[[Tensor], Tensor] | None = None,
                 tiles: Sequence[Tensor | None] | None = None) -> None:
        self.weights, self.biases, self.fallback = list(weights), list(biases), fallback
        self.tiles = list(tiles) if tiles is not None else [None] * len(self.weights)

    def __call__(self, x: Tensor) -> Tensor:
        if use_row_dots(x, self.weights[0]):
            if any(t is not None for t in self.tiles):
                x = realized(x)
            outs = [row_dot_linear(x, w, b) if t is None else tiled_row_dot_linear(x, t, b)
                    for w, b, t in zip(self.weights, self.biases, self.tiles)]
        elif self.fallback is not None:
            return self.fallback(x)
        else:
            outs = [F.linear(x, w, b) for w, b in zip(self.weights, self.biases)]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
