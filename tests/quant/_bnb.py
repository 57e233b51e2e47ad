"""bitsandbytes as the reference for NF4 / FP4, called eagerly.

bitsandbytes 0.50 wraps its pure-PyTorch CPU dequantizer (taken for block sizes >= 2048 on AVX-512 and for odd
last dimensions) in ``torch.compile``; compiling costs seconds per shape on 2 cores, so the reference runs with
dynamo disabled: the same operations, eagerly.
"""

from __future__ import annotations

import pytest
import torch

bnb_functional = pytest.importorskip("bitsandbytes.functional")


def bnb_quantize(w: torch.Tensor, quant_type: str, blocksize: int, double_quant: bool):
    return bnb_functional.quantize_4bit(w, blocksize=blocksize, quant_type=quant_type,
                                        compress_statistics=double_quant)


def bnb_dequantize(packed: torch.Tensor, state) -> torch.Tensor:
    with torch._dynamo.config.patch(disable=True):
        return bnb_functional.dequantize_4bit(packed, state)


def bnb_cpu_dequant_is_exact(shape: tuple[int, ...], blocksize: int) -> bool:
    """Whether bitsandbytes 0.50's CPU ``dequantize_4bit`` can serve as the reference for this shape.

    Its native CPU kernel walks the tensor row by row: when a block is longer than the last dimension, or more
    generally crosses a row boundary (last dimension not a multiple of the block size; measured wrong for last
    dimensions 64, 96, 160, 192, 320 with blocks of 64-256), it returns wrong values. Its pure-PyTorch path,
    taken for odd last dimensions and, on AVX-512, for block sizes >= 2048, is right. Where the kernel is wrong
    only the packed bytes and the absmax values can be compared with bitsandbytes.
    """
    avx512_fallback = torch.backends.cpu.get_cpu_capability() == "AVX512" and blocksize >= 2048
    return shape[-1] % blocksize == 0 or shape[-1] % 2 == 1 or avx512_fallback
