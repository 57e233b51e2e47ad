"""Inductor's C++ GEMM template on a CPU: whether the CPU has AMX, and the compiler settings that select it.

Shared by the compiled decode step (``inference/gemv_choice.py`` picks the template for bfloat16 on a CPU with AMX,
``inference/compile_options.py`` holds the reasons for the settings) and the machine probe (``bench/probe.py``,
which times the same kernel as one candidate for the GEMV ceiling). Module-private, so neither package imports
the other.
"""

from __future__ import annotations

import functools

import torch

# Only the CPP backend is offered (no timing picks between it and the library kernel, so the choice and the
# rounding do not change between compiles); a matmul it cannot serve falls back to the library kernel. The
# template applies only to a weight frozen into the graph (inductor's ``freezing``), which it prepacks.
TEMPLATE_OPTIONS = {"max_autotune_gemm": True, "max_autotune_gemm_backends": "CPP", "autotune_fallback_to_aten": True}


@functools.cache
def has_amx() -> bool:
    """True when this CPU has AMX tiles (Sapphire Rapids and later Xeons), as torch itself detects them."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False
