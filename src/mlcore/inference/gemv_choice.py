"""Which kernel a compiled batch-1 CPU decode step multiplies its float linear layers with.

A decode step multiplies one row by every weight matrix (a GEMV per layer). A compiled CPU step can do that two
ways, and neither wins everywhere:

- ``"row_dots"``: inductor's own reduction over the weight read as cache-line tiles (:mod:`mlcore._row_dot`);
- ``"library"``: the BLAS GEMV the graph calls (MKL's sgemv) on the plain or stacked weight.

What was measured (27M Llama, batch 1, one thread, the same tokens either way):

- 2-core AMD EPYC: the row dots read the model's matrices 1.4-1.7x faster than MKL or oneDNN, float32 and
  bfloat16 alike.
- 2-core Intel Xeon (Sapphire Rapids class: AVX-512, AMX): the compiled float32 step was 1.14x faster per token
  with MKL (6.56 against 7.46 ms, two decoders interleaved over 15 rounds); the trained 4M target's step was
  within noise (0.98x). In bfloat16 the row dots stay ahead: over one layer's matrices (q|k|v, o, gate|up,
  down; four layers) they took 1.1 ms against 2.5 ms for torch's bf16 matmul.

A timed choice inside the library was tried first and rejected: a kernel-only benchmark on the same shapes
picked the row dots on the Xeon (0.92-0.96x), because inside the step inductor fuses the row dots with the
norms and activations around them, which the isolated kernels do not show; timing the whole step both ways
would double the compile time. So the rule is the measured one, and it is fixed per machine (no run-to-run
flips in rounding): MKL's GEMV for float32 on an Intel CPU when torch has MKL, the row dots otherwise. Set
``MLCORE_CPU_GEMV=row_dots`` or ``library`` to override it. Both compute the same dot products, summed in
another order: float32 rounding level.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

__all__ = ["single_row_gemv", "GEMV_KERNELS", "ENV_VAR"]

GEMV_KERNELS = ("row_dots", "library")
ENV_VAR = "MLCORE_CPU_GEMV"


def single_row_gemv(dtype: torch.dtype) -> str:
    """``"row_dots"`` or ``"library"``: the GEMV a compiled batch-1 CPU step uses for ``dtype``'s linear layers
    (see the module docstring). ``MLCORE_CPU_GEMV`` (``row_dots``, ``library`` or ``auto``, the default) pins it;
    a ``CompiledDecoder`` reads it once, when it is made."""
    pinned = os.environ.get(ENV_VAR, "auto").strip().lower()
    if pinned in GEMV_KERNELS:
        return pinned
    if pinned != "auto":
        raise ValueError(f"{ENV_VAR} must be one of {(*GEMV_KERNELS, 'auto')}, got {pinned!r}")
    return "library" if dtype == torch.float32 and _intel_with_mkl() else "row_dots"


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
