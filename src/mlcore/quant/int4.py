"""int4: asymmetric (zero-point) quantization per group of ``group_size`` inputs, two codes per byte.

The convention GPTQ (Frantar et al. 2022) and AWQ (Lin et al. 2023) use for grouped int4 weights: a weight
(out, in) is cut along ``in`` into groups of ``g``; each group gets a scale ``s`` and an integer zero point
``z`` in [0, 15] and its codes ``q`` in [0, 15] mean

    w ~ (q - z) * s.

Round to nearest (``int4_rtn_codes``): widen the group's range to contain 0 (so 0 is exact), ``s = (max -
min) / 15``, ``z = clamp(round(-min / s), 0, 15)``, ``q = clamp(round(w / s) + z, 0, 15)``; every element then
lies within ``s / 2`` of its reconstruction. ``int4_from_codes`` packs codes chosen by any method (GPTQ's error
compensation, AWQ's scaled weights) into the same ``QuantizedTensor`` layout: codes (R, K // 2) uint8 with
element 2j in the high nibble, scales (R, K // g) float32, zeros (R, K // g) uint8.
"""

from __future__ import annotations

import torch

from .tensor import (
    QuantizedTensor,
    check_layout,
    check_weight,
    pack_nibbles,
    range_scale,
    rows_cols,
    to_weight_dtype,
    unpack_nibbles,
)


def check_group_size(group_size: object, k: int, name: str = "group_size") -> int:
    """A positive even int dividing the last dimension ``k`` (ValueError otherwise)."""
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size <= 0 or group_size % 2:
        raise ValueError(f"{name}: expected a positive even int (32, 64, 128 are usual), got {group_size!r}")
    if k % group_size:
        raise ValueError(f"{name}: expected a divisor of the input dimension {k}, got {group_size}")
    return group_size


def int4_rtn_codes(w: torch.Tensor, group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest int4 of ``w`` (out, in): codes (out, in) uint8 in [0, 15], scales (out, in // g)
    float32 and integer zero points (out, in // g) uint8, with ``w ~ (codes - zero) * scale``."""
    check_weight(w)
    if w.dim() != 2:
        raise ValueError(f"w.shape: expected (out, in), got {tuple(w.shape)}")
    out_f, in_f = w.shape
    g = check_group_size(group_size, in_f)
    groups = w.detach().float().reshape(out_f, in_f // g, g)
    lo = groups.amin(dim=-1, keepdim=True).clamp(max=0.0)
    hi = groups.amax(dim=-1, keepdim=True).clamp(min=0.0)
    scale = range_scale(lo, hi, 15)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group: any scale is exact
    zero = torch.clamp(torch.round(-lo / scale), 0, 15)
    codes = torch.clamp(torch.round(groups / scale) + zero, 0, 15)
    return (codes.reshape(out_f, in_f).to(torch.uint8), scale.squeeze(-1),
            zero.squeeze(-1).to(torch.uint8))


def int4_from_codes(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
                    dtype: torch.dtype) -> QuantizedTensor:
    """Pack int4 ``codes`` (out, in) with values 0..15, ``scales`` (out, in // g) and integer ``zeros``
    (out, in // g) into a ``QuantizedTensor`` whose dequantization is ``(code - zero) * scale`` in ``dtype``."""
    if not isinstance(codes, torch.Tensor) or codes.dim() != 2:
        raise ValueError(f"codes: expected a 2-D tensor (out, in), got "
                         f"{tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__}")
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise ValueError(f"codes.dtype: expected an integer dtype, got {codes.dtype}")
    out_f, in_f = codes.shape
    g = check_group_size(group_size, in_f)
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) > 15):
        raise ValueError(f"codes: expected values in [0, 15], got [{int(codes.min())}, {int(codes.max())}]")
    want = (out_f, in_f // g)
    for name, t in (("scales", scales), ("zeros", zeros)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != want:
            seen = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name}.shape: expected {want}, got {seen}")
    if not scales.dtype.is_floating_point or not bool(torch.isfinite(scales).all()):
        raise ValueError(f"scales: expected finite floating-point values, got dtype {scales.dtype}")
    z = zeros.detach()
    if z.dtype.is_floating_point:
        if not bool((z == z.round()).all()):
            raise ValueError("zeros: expected integer zero points, got fractional values")
    if int(z.min()) < 0 or int(z.max()) > 15:
        raise ValueError(f"zeros: expected values in [0, 15], got [{int(z.min())}, {int(z.max())}]")
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype: expected float32, float16 or bfloat16, got {dtype}")
    qt = QuantizedTensor(data=pack_nibbles(codes.detach()), scales=scales.detach().float().contiguous(),
                         zeros=z.to(torch.uint8).contiguous(), scheme="int4", shape=(out_f, in_f), dtype=dtype,
                         group_size=g, granularity="group", symmetric=False)
    check_layout(qt)
    return qt


def quantize_int4(w: torch.Tensor, *, group_size: int = 128) -> QuantizedTensor:
    """Round-to-nearest int4 of ``w`` (out, in) in groups of ``group_size`` along ``in``."""
    codes, scales, zeros = int4_rtn_codes(w, group_size)
    return int4_from_codes(codes, scales, zeros, group_size, w.dtype)


def int4_codes(qt: QuantizedTensor) -> torch.Tensor:
    """The unpacked codes (R, K) uint8 of an int4 ``QuantizedTensor``."""
    return unpack_nibbles(qt.data)


def dequantize_int4(qt: QuantizedTensor) -> torch.Tensor:
    """``(q - z) * s`` in float32, cast to ``qt.dtype`` and reshaped to ``qt.shape``."""
    r, k = rows_cols(qt.shape)
    g = qt.group_size
    w = int4_codes(qt).float().reshape(r, k // g, g)  # one float32 buffer, updated in place
    w.sub_(qt.zeros.unsqueeze(-1)).mul_(qt.scales.unsqueeze(-1))
    return to_weight_dtype(w.reshape(qt.shape), qt.dtype)
