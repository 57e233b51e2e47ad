"""``quantize(w, scheme, **options)`` and ``dequantize(qt)``: one entry point for every number format.

=========  ==========================================================  =======================================
scheme     options (defaults)                                          stored
=========  ==========================================================  =======================================
``int8``   ``symmetric=True``, ``granularity="channel"``               int8 codes, float32 scale per output row
           (``"tensor"`` | ``"channel"`` | ``"group"``), ``group_size``  (uint8 codes + zero points if asymmetric)
``int4``   ``group_size=128``                                          4-bit codes, float32 scale and uint8 zero
                                                                       point per group of inputs
``nf4``    ``blocksize=64``, ``double_quant=True``                      bitsandbytes' NF4 (QLoRA)
``fp4``    ``blocksize=64``, ``double_quant=True``                      bitsandbytes' FP4
=========  ==========================================================  =======================================
"""

from __future__ import annotations

from typing import Any

import torch

from .int4 import dequantize_int4, quantize_int4
from .int8 import dequantize_int8, quantize_int8
from .nf4 import dequantize_4bit, quantize_4bit
from .tensor import SCHEMES, QuantizedTensor, check_layout

OPTIONS: dict[str, tuple[str, ...]] = {
    "int8": ("symmetric", "granularity", "group_size"),
    "int4": ("group_size",),
    "nf4": ("blocksize", "double_quant"),
    "fp4": ("blocksize", "double_quant"),
}


def check_scheme(scheme: object, options: dict[str, Any]) -> str:
    """``scheme`` is known and every option belongs to it (ValueError naming the offender otherwise)."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme: expected one of {SCHEMES}, got {scheme!r}")
    unknown = sorted(set(options) - set(OPTIONS[scheme]))
    if unknown:
        raise ValueError(f"options: {unknown} not understood by scheme {scheme!r}; expected some of "
                         f"{OPTIONS[scheme]}")
    return scheme


def quantize(w: torch.Tensor, scheme: str, **options: Any) -> QuantizedTensor:
    """Quantize a float32 / float16 / bfloat16 tensor ``w`` with ``scheme`` (see the module table)."""
    check_scheme(scheme, options)
    if scheme == "int8":
        return quantize_int8(w, **options)
    if scheme == "int4":
        if isinstance(w, torch.Tensor) and w.dim() != 2:
            raise ValueError(f"w.shape: int4 expects a 2-D weight (out, in), got {tuple(w.shape)}")
        return quantize_int4(w, **options)
    return quantize_4bit(w, scheme, **options)


def dequantize(qt: QuantizedTensor) -> torch.Tensor:
    """The tensor ``qt`` stands for, in its original shape and dtype."""
    if not isinstance(qt, QuantizedTensor):
        raise ValueError(f"qt: expected a QuantizedTensor, got {type(qt).__name__}")
    check_layout(qt)
    return dequantize_unchecked(qt)


def dequantize_unchecked(qt: QuantizedTensor) -> torch.Tensor:
    """``dequantize`` without re-checking the layout (for callers that checked it once, as QuantizedLinear)."""
    if qt.scheme == "int8":
        return dequantize_int8(qt)
    if qt.scheme == "int4":
        return dequantize_int4(qt)
    return dequantize_4bit(qt)
