"""NF4 and FP4 block-wise quantization with double quantization, in bitsandbytes' exact format.

QLoRA (Dettmers et al. 2023, sec. 3). The tensor is flattened and cut into blocks of ``blocksize``
consecutive elements (64 by default; the last block may be shorter). For block ``b``:

    absmax_b = max_i |w_i|,   code_i = argmin_c |w_i / absmax_b - C[c]|,   w_i ~ C[code_i] * absmax_b

with ``C`` the 16-value NF4 or FP4 code book (``codebooks.py``), computed in float32 (the scaled value is
``w * (1 / absmax)``, in a shorter last block ``w / absmax``, as bitsandbytes computes them). Two codes share a
byte, the first element in the high nibble.

**Double quantization** (sec. 3, "Double Quantization"): the float32 absmax values cost 32 / blocksize bits
per parameter (0.5 at 64). Subtract their mean ``c``, quantize ``absmax - c`` in blocks of 256 with the
signed 8-bit dynamic map, keep one float32 absmax per 256 blocks (rounded as bitsandbytes 0.50's CPU kernel
rounds, through a 65536-point grid: ``codebooks.table_code``; its CUDA kernel searches for the nearest code
instead, so on a GPU a nested code may differ where a scaled absmax lies within 1.5e-5 of a midpoint between two
codes -- unverified here, no GPU was available):

    bits/param = 4 + 8 / 64 + 32 / (64 * 256) = 4.127  (blocksize 64)

The 4-bit codes are always chosen with the exact absmax; only the stored scales are double-quantized.
"""

from __future__ import annotations

from typing import Any

import torch

from .codebooks import code_tensor, nearest_code, signed_dynamic_map, table_code
from .tensor import (
    FOUR_BIT_BLOCKSIZES,
    NestedScales,
    QuantizedTensor,
    check_layout,
    check_weight,
    pack_nibbles,
    to_weight_dtype,
)

BLOCKSIZES: tuple[int, ...] = FOUR_BIT_BLOCKSIZES
NESTED_BLOCKSIZE = 256


def _blocks(flat: torch.Tensor, blocksize: int) -> torch.Tensor:
    """(n,) -> (ceil(n / blocksize), blocksize), the last block padded with zeros (they change no absmax)."""
    pad = (-flat.numel()) % blocksize
    return torch.nn.functional.pad(flat, (0, pad)).reshape(-1, blocksize)


def blockwise_absmax_codes(x: torch.Tensor, code: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-wise absmax quantization of ``x`` (n,) float32 with code book ``code`` (K,).

    Returns (codes (n,) int64, absmax (ceil(n / blocksize),) float32). The arithmetic is bitsandbytes' to the
    last bit, so that a value on a boundary between two codes falls the same way: full blocks are scaled by
    ``x * (1 / max(absmax, 1e-38))``; a shorter last block by ``x / max(absmax, 1e-38)``, and that clamped
    absmax is the one stored for it (an all-zero last block keeps 1e-38, a full one 0).
    """
    n = x.numel()
    rem = n % blocksize
    full = n - rem
    blocks = x[:full].reshape(-1, blocksize)
    absmax = blocks.abs().amax(dim=-1)
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38)).unsqueeze(-1), -1.0, 1.0).reshape(-1)
    if rem:
        last = x[full:].abs().amax().clamp(min=1e-38)
        absmax = torch.cat([absmax, last.reshape(1)])
        scaled = torch.cat([scaled, torch.clamp(x[full:] / last, -1.0, 1.0)])
    return nearest_code(scaled, code), absmax


def quantize_blockwise_dynamic(x: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """bitsandbytes' CPU ``quantize_blockwise`` of ``x`` (n,) float32 with the signed dynamic map, to the bit.

    Returns (codes (n,) uint8, absmax (ceil(n / blocksize),) float32). Unlike the 4-bit level there is no 1e-38
    floor and no separate rule for a shorter last block: every block is scaled by ``x * (1 / absmax)`` in float32
    (the reciprocal overflows to inf below absmax ~2.9e-39) and rounded by :func:`table_code` (a 65536-point grid,
    not the nearest code). A block of zeros stores absmax 0 and codes 0, as bitsandbytes writes them: its
    ``0 * (1 / 0)`` is NaN, which ``table_code`` sends to code 0.
    """
    n = x.numel()
    absmax = _blocks(x, blocksize).abs().amax(dim=-1)  # the zero padding changes no maximum
    inverse = (1.0 / absmax).repeat_interleave(blocksize)[:n]
    return table_code(x * inverse, signed_dynamic_map(x.device)).to(torch.uint8), absmax


def double_quantize(absmax: torch.Tensor, blocksize: int = NESTED_BLOCKSIZE) -> tuple[torch.Tensor, NestedScales]:
    """Second level: ``absmax`` (n,) -> (uint8 codes (n,), NestedScales) with the signed dynamic map.

    This level is bitsandbytes' ``quantize_blockwise`` of ``absmax - offset`` (:func:`quantize_blockwise_dynamic`),
    not ``quantize_4bit``. A block of zeros (e.g. a tensor of a single 4-bit block) stores absmax 0 and codes 0;
    dequantization only multiplies by that absmax (``D[0] * 0 = 0``), so it still comes back as exactly ``offset``.
    The ``offset`` is the float32 mean, as bitsandbytes computes it; where that sum overflows (absmax values
    near float32's limit, beyond 1e36 or so) it is taken in float64 instead: bitsandbytes then stores an
    infinite offset and dequantizes the whole tensor to inf / NaN.
    """
    offset = absmax.mean()
    if not bool(torch.isfinite(offset)):
        offset = absmax.double().mean().float()
    codes, absmax2 = quantize_blockwise_dynamic(absmax - offset, blocksize)
    return codes, NestedScales(absmax=absmax2, offset=offset, blocksize=blocksize)


def dequantize_absmax(codes: torch.Tensor, nested: NestedScales) -> torch.Tensor:
    """First-level absmax (n,) float32 = ``D[codes] * nested.absmax[i // blocksize] + offset``."""
    n = codes.numel()
    values = _blocks(signed_dynamic_map(codes.device)[codes.long()], nested.blocksize)
    return (values * nested.absmax.unsqueeze(-1)).reshape(-1)[:n] + nested.offset


def quantize_4bit(w: torch.Tensor, quant_type: str = "nf4", *, blocksize: int = 64,
                  double_quant: bool = True) -> QuantizedTensor:
    """NF4 / FP4 of ``w`` (any shape, float32 / float16 / bfloat16) in blocks of ``blocksize`` elements."""
    check_weight(w)
    if quant_type not in ("nf4", "fp4"):
        raise ValueError(f"quant_type: expected 'nf4' or 'fp4', got {quant_type!r}")
    if not isinstance(blocksize, int) or isinstance(blocksize, bool) or blocksize not in BLOCKSIZES:
        raise ValueError(f"blocksize: expected one of {BLOCKSIZES}, got {blocksize!r}")
    if not isinstance(double_quant, bool):
        raise ValueError(f"double_quant: expected True or False, got {double_quant!r}")
    flat = w.detach().reshape(-1).float()
    codes, absmax = blockwise_absmax_codes(flat, code_tensor(quant_type, flat.device), blocksize)
    if codes.numel() % 2:
        codes = torch.nn.functional.pad(codes, (0, 1), value=int(nearest_code(
            torch.zeros(1, device=codes.device), code_tensor(quant_type, codes.device))))
    nested = None
    scales = absmax
    if double_quant:
        scales, nested = double_quantize(absmax)
    qt = QuantizedTensor(data=pack_nibbles(codes), scales=scales, zeros=None, scheme=quant_type,
                         shape=tuple(w.shape), dtype=w.dtype, group_size=blocksize, granularity="block",
                         symmetric=True, nested=nested)
    check_layout(qt)
    return qt


def block_absmax(qt: QuantizedTensor) -> torch.Tensor:
    """The first-level absmax (n_blocks,) float32 of an NF4 / FP4 tensor (undoing double quantization)."""
    return qt.scales if qt.nested is None else dequantize_absmax(qt.scales, qt.nested)


def byte_table(quant_type: str, device: torch.device | str | None = None) -> torch.Tensor:
    """(256, 2) float32: the two code-book values a packed byte stands for (high nibble first)."""
    code = code_tensor(quant_type, device)
    b = torch.arange(256, device=device)
    return torch.stack([code[b >> 4], code[b & 0xF]], dim=-1)


def dequantize_4bit(qt: QuantizedTensor) -> torch.Tensor:
    """``C[code] * absmax`` in float32 per block, cast to ``qt.dtype`` and reshaped to ``qt.shape`` (float16 values
    beyond 65504 are clamped to it, where bitsandbytes gives inf)."""
    n, bs = qt.numel, qt.group_size
    # one gather per byte from a (256, 2) table: index_select is several times faster than advanced indexing
    values = byte_table(qt.scheme, qt.data.device).index_select(0, qt.data.long()).reshape(-1)  # (2 ceil(n/2),)
    absmax = block_absmax(qt)
    if values.numel() % bs:
        values = torch.nn.functional.pad(values, (0, bs - values.numel() % bs))
    values.view(-1, bs).mul_(absmax.unsqueeze(-1))
    # float16: a double-quantized scale may land above 65504, where bitsandbytes returns inf; clamp (int8 / int4 too)
    return to_weight_dtype(values[:n].reshape(qt.shape), qt.dtype)


def check_not_repacked(quant_state: Any, what: str) -> None:
    """ValueError if bitsandbytes repacked the weight for its AVX512-BF16 CPU kernel (it does at the first
    forward of an eval-mode ``Linear4bit`` without gradients): the bytes and scales are then in that kernel's
    layout (bfloat16 scales, no double quantization), not ``quantize_4bit``'s."""
    if getattr(quant_state, "packing_format_for_cpu", False):
        raise ValueError(f"{what}: repacked for bitsandbytes' AVX512-BF16 CPU kernel by a forward; read the "
                         "weights before running the model, or load with cpu_bf16_kernel=False")


def from_bitsandbytes(packed: torch.Tensor, quant_state: Any) -> QuantizedTensor:
    """Wrap bitsandbytes' ``quantize_4bit`` output (packed bytes and its ``QuantState``) as a QuantizedTensor.

    Reads only plain attributes (``quant_type, blocksize, shape, dtype, absmax, code, offset, state2``), so
    bitsandbytes need not be importable here; a code book other than NF4 / FP4 / the dynamic map is refused.
    """
    check_not_repacked(quant_state, "quant_state")
    quant_type = getattr(quant_state, "quant_type", None)
    if quant_type not in ("nf4", "fp4"):
        raise ValueError(f"quant_state.quant_type: expected 'nf4' or 'fp4', got {quant_type!r}")
    code = getattr(quant_state, "code", None)
    if code is not None and not torch.equal(code.float().cpu(), code_tensor(quant_type)):
        raise ValueError(f"quant_state.code: expected the {quant_type} code book, got {code.tolist()}")
    nested = None
    state2 = getattr(quant_state, "state2", None)
    if state2 is not None:
        if not torch.equal(state2.code.float().cpu(), signed_dynamic_map()):
            raise ValueError("quant_state.state2.code: expected the signed 8-bit dynamic map")
        offset = torch.as_tensor(quant_state.offset, dtype=torch.float32, device=packed.device).reshape(())
        nested = NestedScales(absmax=state2.absmax.float(), offset=offset, blocksize=int(state2.blocksize))
    data = packed.contiguous().view(torch.uint8).reshape(-1)
    qt = QuantizedTensor(data=data, scales=quant_state.absmax, zeros=None, scheme=quant_type,
                         shape=tuple(quant_state.shape), dtype=quant_state.dtype,
                         group_size=int(quant_state.blocksize), granularity="block", symmetric=True, nested=nested)
    check_layout(qt)
    return qt
