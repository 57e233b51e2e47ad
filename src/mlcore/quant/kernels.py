"""PyTorch's weight-only low-bit matmul kernels on CPU, and when each one may run.

Both read the low-bit weight directly (no dequantized copy), which is what makes batch-1 decoding faster:
it is bound by the bytes of weight read per token. Both are fast only with bfloat16 activations (their float32
and float16 paths are scalar code), which is why ``QuantizedLinear`` picks them automatically only then.

- ``aten._weight_int8pack_mm(x (M, K), w (N, K) int8, scales (N,)) -> (M, N)`` computes ``x @ (w * s).T``
  with one scale per output row (symmetric). ``scales`` must have ``x``'s dtype. In torch 2.13 on an AVX-512
  CPU, K that is not a multiple of 16 gives wrong results or a crash, so the path asks for K % 16 == 0.
- ``aten._convert_weight_to_int4pack_for_cpu(q (N, K) int32 in [0, 15], innerKTiles)`` repacks codes and
  ``aten._weight_int4pack_mm_for_cpu(x (M, K), packed, g, sz (K / g, N, 2)) -> (M, N)`` computes with
  ``w = (q - 8) * sz[..., 0] + sz[..., 1]``: the zero is a float added after the scale ("min" convention),
  not an integer subtracted before it. Our ``(q - z) * s`` is the same line with ``sz = (s, (8 - z) * s)``.
  Needs N % 16 == 0 and g in {32, 64, 128, 256}; ``sz`` has ``x``'s dtype (bf16 activations are the fast case;
  rounding ``s`` and ``(8 - z) * s`` to bf16 is the only difference from dequantize-then-matmul).

Alignment: torch 2.13's AVX-512 bfloat16 path of ``_weight_int8pack_mm`` uses aligned vector loads once it
has 4 rows or more, and segfaults on a weight not 16-byte aligned or activations not 32-byte aligned. The
tensors safetensors hands out (``load_quantized``) start 8 bytes past a 64-byte boundary, and a view at an
odd offset may too; ``aligned`` copies such a tensor (torch's CPU allocator returns 64-byte aligned memory).
"""

from __future__ import annotations

import torch

from .int4 import int4_codes
from .tensor import QuantizedTensor

KERNELS: tuple[str, ...] = ("int8pack", "int4pack", "dequant")
# Activation dtypes for which "auto" takes these kernels. Measured (torch 2.13, AVX-512, 1 thread, 2048 x 2048
# weight, 1 token): int8pack 0.26 ms with bf16 activations but 17 ms with fp32 or fp16; int4pack (g128) 0.26 ms
# bf16, 31 ms fp32, 30 ms fp16; a dense bf16 matmul takes 1.0 ms, fp32 1.8 ms.
AUTO_FAST_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16,)
INT4_GROUP_SIZES: tuple[int, ...] = (32, 64, 128, 256)
KERNEL_ALIGN = 64  # bytes: covers the 16 (weight) and 32 (activations) that _weight_int8pack_mm needs


def aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its data starts on a ``KERNEL_ALIGN``-byte boundary, else a contiguous copy (which does:
    see the module docstring). Eager tensors only (a traced fake tensor has no address)."""
    return t if t.data_ptr() % KERNEL_ALIGN == 0 else t.contiguous().clone()


def _has_op(name: str) -> bool:
    return hasattr(torch.ops.aten, name)


def unavailable_reason(kernel: str, qt: QuantizedTensor) -> str | None:
    """Why ``kernel`` cannot multiply by ``qt`` (None when it can)."""
    if kernel == "dequant":
        return None
    if qt.device.type != "cpu":
        return f"{kernel} is a CPU kernel, the weight is on {qt.device}"
    if len(qt.shape) != 2:
        return f"{kernel} needs a 2-D weight, got shape {qt.shape}"
    n, k = qt.shape
    if kernel == "int8pack":
        if not _has_op("_weight_int8pack_mm"):
            return "torch has no aten._weight_int8pack_mm"
        if qt.scheme != "int8" or not qt.symmetric or qt.granularity not in ("tensor", "channel"):
            return (f"int8pack needs symmetric int8 per tensor or channel, got {qt.scheme} "
                    f"(symmetric={qt.symmetric}, granularity={qt.granularity})")
        if k % 16:
            return f"int8pack needs in_features % 16 == 0, got {k}"
        return None
    if kernel == "int4pack":
        if not (_has_op("_weight_int4pack_mm_for_cpu") and _has_op("_convert_weight_to_int4pack_for_cpu")):
            return "torch has no aten._weight_int4pack_mm_for_cpu"
        if qt.scheme != "int4":
            return f"int4pack needs an int4 weight, got {qt.scheme}"
        if n % 16:
            return f"int4pack needs out_features % 16 == 0, got {n}"
        if qt.group_size not in INT4_GROUP_SIZES:
            return f"int4pack needs group_size in {INT4_GROUP_SIZES}, got {qt.group_size}"
        return None
    raise ValueError(f"kernel: expected one of {KERNELS}, got {kernel!r}")


def int8_channel_scales(qt: QuantizedTensor) -> torch.Tensor:
    """One float32 scale per output row (N,) of a symmetric int8 weight (a per-tensor scale is repeated)."""
    return qt.scales.reshape(-1).expand(qt.shape[0]).contiguous()


# The kernels as custom ops: under ``torch.compile`` an opaque external call with materialised inputs. Only a graph
# that computes the kernel's scales itself needs them: inductor's own lowerings of the two aten ops assert on a
# scale tensor an element-wise node produced (torch 2.13). QuantizedLinear.prepare_traced keeps the scales
# ready, so a compiled decode step calls the aten ops directly; eager code always does.
@torch.library.custom_op("mlcore::int8pack_mm", mutates_args=())
def int8pack_mm_op(x2: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``aten._weight_int8pack_mm``: (M, K) @ int8 (N, K).T * scales (N,) -> (M, N)."""
    return torch.ops.aten._weight_int8pack_mm(x2.contiguous(), weight, scales)


@int8pack_mm_op.register_fake
def _int8pack_mm_shape(x2: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return x2.new_empty((x2.shape[0], weight.shape[0]))


@torch.library.custom_op("mlcore::int4pack_mm", mutates_args=())
def int4pack_mm_op(x2: torch.Tensor, packed: torch.Tensor, group_size: int, sz: torch.Tensor) -> torch.Tensor:
    """``aten._weight_int4pack_mm_for_cpu``: (M, K) @ int4 (N, K).T with scales-and-zeros ``sz`` (K / g, N, 2)."""
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x2.contiguous(), packed, group_size, sz)


@int4pack_mm_op.register_fake
def _int4pack_mm_shape(x2: torch.Tensor, packed: torch.Tensor, group_size: int, sz: torch.Tensor) -> torch.Tensor:
    return x2.new_empty((x2.shape[0], sz.shape[1]))


def int4pack_weight(qt: QuantizedTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(repacked codes for the CPU kernel, scales-and-zeros (K / g, N, 2) float32 in torch's convention)."""
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(int4_codes(qt).to(torch.int32).contiguous(), 1)
    zero_point = (8.0 - qt.zeros.float()) * qt.scales  # (q - z) s = (q - 8) s + (8 - z) s
    sz = torch.stack([qt.scales, zero_point], dim=-1).transpose(0, 1).contiguous()
    return packed, sz
