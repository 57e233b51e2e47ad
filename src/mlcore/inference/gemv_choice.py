"""Which kernel a compiled batch-1 CPU decode step multiplies its float linear layers with.

A decode step multiplies one row by every weight matrix (a GEMV per layer). A compiled CPU step can do that
three ways, and none wins everywhere:

- ``"row_dots"``: inductor's own reduction over the weight read as cache-line tiles (:mod:`mlcore._row_dot`);
- ``"library"``: the BLAS GEMV the graph calls (MKL's sgemv) on the plain or stacked weight;
- ``"template"``: inductor's C++ GEMM template (its ``max_autotune_gemm`` CPU backend), which generates each
  matmul as a kernel around a micro-GEMM -- AMX tile instructions on a CPU that has them -- over a weight
  frozen into the graph and prepacked for it (:data:`mlcore.inference.compile_options.TEMPLATE_OPTIONS`).

What was measured (27M Llama, batch 1, one thread, the same tokens either way):

- 2-core AMD EPYC: the row dots read the model's matrices 1.4-1.7x faster than MKL or oneDNN, float32 and
  bfloat16 alike.
- 2-core Intel Xeon (Sapphire Rapids class: AVX-512, AMX): the compiled float32 step was 1.14x faster per token
  with MKL (6.56 against 7.46 ms, two decoders interleaved over 15 rounds); the trained 4M target's step was
  within noise (0.98x). In bfloat16 the row dots stay ahead: over one layer's matrices (q|k|v, o, gate|up,
  down; four layers) they took 1.1 ms against 2.5 ms for torch's bf16 matmul.
- Same Xeon, bfloat16, the whole step: the template's AMX kernels read the model's matrices at 21-22 GB/s
  (profiled per kernel, one thread), where the tiled row dots reached ~11 GB/s and oneDNN's packed bf16 GEMV
  in a frozen graph 10-12 GB/s (these matrices are 512-1408 wide; oneDNN reaches 25 GB/s only on the
  probe's 4096-wide one). Per token of the 27M Llama: 5.1 -> 2.7-3.1 ms (1.6-1.9x), the same greedy tokens.
  In float32 the template was slower than MKL (9.1 against 7.1 ms), so float32 keeps MKL.

A timed choice inside the library was tried first and rejected: a kernel-only benchmark on the same shapes
picked the row dots on the Xeon (0.92-0.96x), because inside the step inductor fuses the row dots with the
norms and activations around them, which the isolated kernels do not show; timing the whole step both ways
would double the compile time. So the rule is the measured one, and it is fixed per machine (no run-to-run
flips in rounding): MKL's GEMV for float32 on an Intel CPU when torch has MKL; the template for bfloat16 on a
CPU with AMX (only its one template kernel is allowed per matmul, so no timing picks between kernels either);
the row dots otherwise. Set ``MLCORE_CPU_GEMV=row_dots``, ``library`` or ``template`` to override it. All
compute the same dot products, summed in another order: float32 rounding level (bfloat16: one rounding of
the float32 sum).

The template needs the weights frozen into the graph (they become constants it prepacks): a decoder that
cannot freeze them (inference-tensor weights, ``freeze=False``) or whose model has layers with row dots of
their own (int8 ``QuantizedLinear``: freezing would fold their widened weights into float32 copies) uses the
row dots instead (``CompiledDecoder`` decides).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from mlcore._gemm_template import has_amx as _has_amx

__all__ = ["single_row_gemv", "GEMV_KERNELS", "ENV_VAR"]

GEMV_KERNELS = ("row_dots", "library", "template")
ENV_VAR = "MLCORE_CPU_GEMV"


def single_row_gemv(dtype: torch.dtype) -> str:
    """``"row_dots"``, ``"library"`` or ``"template"``: the GEMV a compiled batch-1 CPU step uses for ``dtype``'s
    linear layers (see the module docstring). ``MLCORE_CPU_GEMV`` (``row_dots``, ``library``, ``template`` or
    ``auto``, the default) pins it; a ``CompiledDecoder`` reads it once, when it is made."""
    pinned = os.environ.get(ENV_VAR, "auto").strip().lower()
    if pinned in GEMV_KERNELS:
        return pinned
    if pinned != "auto":
        raise ValueError(f"{ENV_VAR} must be one of {(*GEMV_KERNELS, 'auto')}, got {pinned!r}")
    if dtype == torch.float32 and _intel_with_mkl():
        return "library"
    if dtype == torch.bfloat16 and _has_amx():
        return "template"
    return "row_dots"


@functools.cache
def _intel_with_mkl() -> bool:
    """True on an Intel CPU (``vendor_id`` GenuineIntel in /proc/cpuinfo) when torch was built with MKL."""
    if not torch.backends.mkl.is_available():
        return False
    try:
        with Path("/proc/cpuinfo").open() as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip() == "GenuineIntel"
    except OSError:
        pass
    return False
