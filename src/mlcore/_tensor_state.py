"""One key for "are these still the same tensors, unchanged?", shared by the caches of derived tensors.

The stacked q/k/v weight (``attention/fused_linear.py``), the prepared CPU kernel arguments of a quantized
linear (``quant/linear.py``) and the RoPE tables (``attention/rope_tables.py``) are computed from other tensors
and must be rebuilt when those change. A tensor is unchanged while it is the same object at the same address
with the same version counter (``tensor._version`` grows with every in-place write: an optimizer step,
``load_state_dict``, ``copy_``). Module-private, so the leaf packages stay free of each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch

# Inference tensors (made under torch.inference_mode) keep no version counter; they can change in place only
# inside inference_mode, which a key then does not see.
_NO_VERSION = -2


def tensor_state_key(tensors: Iterable[torch.Tensor | None]) -> tuple[int, ...]:
    """(id, data_ptr, version) of each tensor, flattened; -1 for a missing one (a bias that is None)."""
    key: list[int] = []
    for t in tensors:
        if t is None:
            key.append(-1)
        else:
            key += (id(t), t.data_ptr(), _NO_VERSION if t.is_inference() else t._version)
    return tuple(key)


@contextlib.contextmanager
def normal_tensors() -> Iterator[None]:
    """Make tensors that are neither inference tensors nor part of an autograd graph, whatever mode the caller
    is in: buffers and weight copies reused by later calls (outside ``torch.inference_mode`` they could not be
    written in place). ``inference_mode(False)`` alone turns grad mode *on*, so ``no_grad`` follows it."""
    with torch.inference_mode(False), torch.no_grad():
        yield

