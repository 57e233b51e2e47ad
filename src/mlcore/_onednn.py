"""Whether oneDNN can run bfloat16 linears here: its packed-weight ops exist and the CPU supports bf16.

Shared by the decode layouts (``attention/fused_linear.py``), which pack bf16 weights for oneDNN, and the machine
probe (``bench/probe.py``), which times that layout as one candidate for the GEMV ceiling. Module-private, so
neither package imports the other.
"""

from __future__ import annotations

import torch


def onednn_bf16_available() -> bool:
    """True when ``torch.ops.mkldnn._reorder_linear_weight`` / ``_linear_pointwise`` can run in bfloat16."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
