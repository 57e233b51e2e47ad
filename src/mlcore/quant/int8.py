"""int8 round-to-nearest quantization: symmetric absmax and asymmetric zero-point (Jacob et al. 2018).

A weight is seen as rows (R, K) of its last dimension (for ``nn.Linear``: R = out, K = in). Each scale covers
the whole tensor (``"tensor"``), one output row (``"channel"``, the default) or ``group_size`` consecutive
inputs of a row (``"group"``).

- symmetric (absmax): ``s = max|w| / 127``, ``q = round(w / s)`` in [-127, 127] (int8), ``w ~ q * s``.
- asymmetric (zero point): the range is widened to contain 0 (as PyTorch's observers do, so 0 is exact),
  ``s = (max - min) / 255``, ``z = clamp(round(-min / s), 0, 255)``, ``q = clamp(round(w / s) + z, 0, 255)``
  (uint8), ``w ~ (q - z) * s``.

Either way ``|w - dequantize(q)| <= s / 2``: the grid covers the range up to half a step at each end.
"""

from __future__ import annotations

import torch

from .tensor import QuantizedTensor, check_layout, check_weight, range_scale, rows_cols, to_weight_dtype


def _grouped(w2: torch.Tensor, granularity: str, group_size: int | None) -> torch.Tensor:
    """View rows (R, K) as (G_rows, G_cols, n) so that each scale reduces over the last dimension."""
    r, k = w2.shape
    if granularity == "tensor":
        return w2.reshape(1, 1, r * k)
    if granularity == "channel":
        return w2.reshape(r, 1, k)
    return w2.reshape(r, k // group_size, group_size)


def quantize_int8(w: torch.Tensor, *, symmetric: bool = True, granularity: str = "channel",
                  group_size: int | None = None) -> QuantizedTensor:
    """Quantize ``w`` (..., K) to int8 codes with one scale per tensor / output row / group of K."""
    check_weight(w)
    if not isinstance(symmetric, bool):
        raise ValueError(f"symmetric: expected True or False, got {symmetric!r}")
    if granularity not in ("tensor", "channel", "group"):
        raise ValueError(f"granularity: expected 'tensor', 'channel' or 'group', got {granularity!r}")
    r, k = rows_cols(tuple(w.shape))
    if granularity == "group":
        if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size <= 0 or k % group_size:
            raise ValueError(f"group_size: expected a positive int dividing the last dimension {k}, "
                             f"got {group_size!r}")
    elif group_size is not None:
        raise ValueError(f"group_size: only used with granularity='group', got {group_size!r} with "
                         f"granularity={granularity!r}")
    g = _grouped(w.detach().reshape(r, k).float(), granularity, group_size)
    if symmetric:
        scale = g.abs().amax(dim=-1, keepdim=True) / 127.0
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group: any scale is exact
        q = torch.clamp(torch.round(g / scale), -127, 127).to(torch.int8)
        zeros = None
    else:
        lo = g.amin(dim=-1, keepdim=True).clamp(max=0.0)
        hi = g.amax(dim=-1, keepdim=True).clamp(min=0.0)
        scale = range_scale(lo, hi, 255)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.clamp(torch.round(-lo / scale), 0, 255)
        q = torch.clamp(torch.round(g / scale) + zero, 0, 255).to(torch.uint8)
        zeros = zero.squeeze(-1).to(torch.uint8)
    qt = QuantizedTensor(data=q.reshape(r, k), scales=scale.squeeze(-1), zeros=zeros, scheme="int8",
                         shape=tuple(w.shape), dtype=w.dtype, group_size=group_size, granularity=granularity,
                         symmetric=symmetric)
    check_layout(qt)
    return qt


def dequantize_int8(qt: QuantizedTensor) -> torch.Tensor:
    """``q * s`` (symmetric) or ``(q - z) * s`` (zero point), computed in float32, cast to ``qt.dtype``."""
    w = _grouped(qt.data.float(), qt.granularity, qt.group_size)  # one float32 buffer, updated in place
    if qt.zeros is not None:
        w.sub_(qt.zeros.unsqueeze(-1))
    w.mul_(qt.scales.unsqueeze(-1))
    return to_weight_dtype(w.reshape(qt.shape), qt.dtype)
