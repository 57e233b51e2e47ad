"""The KV-cache protocol: what an attention layer asks of a cache (types only; caches live in mlcore.inference).

During decoding, the keys and values of past tokens never change, so each layer keeps them and computes K, V
for the new tokens only. A cache answers one call per layer and step:

    keys, values, key_index = cache.update(layer_idx, k_new, v_new, index_new)

with ``k_new, v_new`` (B, Hkv, T, D) and ``index_new`` (B, T) the column index of each new token (-1 for
padding; see :mod:`mlcore.attention.inputs`). It returns every key and value the new queries may look at,
(B, Hkv, Tk, D), and their indices (B, Tk), -1 marking slots that hold nothing (a preallocated buffer not yet
written, a free ring slot, padding). Masks are built from these indices, so the memory layout is the cache's
own business: concatenated, preallocated, ring buffer or paged.

``get_seq_length(layer_idx)`` is the number of columns seen so far (a Python int: reading it never waits for
the device), and ``crop(n)`` forgets everything after the first ``n`` columns (speculative decoding rolls back
rejected draft tokens with it).

Argument order: transformers' ``Cache.update(key_states, value_states, layer_idx)`` puts the layer last;
mlcore's puts it first. ``Transformer`` refuses a transformers cache with a message rather than failing deep
inside attention.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class KVCache(Protocol):
    """Structural type of an mlcore KV cache (see the module docstring for shapes)."""

    def update(self, layer_idx: int, k: Tensor, v: Tensor, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Store new keys/values (B, Hkv, T, D) with their column indices (B, T); return all (k, v, key_index)."""
        ...

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Columns seen so far (cached tokens, padding included), as a Python int."""
        ...

    def crop(self, n: int) -> None:
        """Keep only the first ``n`` columns (rollback of rejected speculative tokens)."""
        ...


_MEMBERS = ("update", "get_seq_length", "crop")


def check_cache(cache: object) -> None:
    """Raise a clear ValueError for an object that is not an mlcore KV cache (e.g. a transformers ``Cache``)."""
    if cache is None:
        return
    module = type(cache).__module__ or ""
    if module.split(".")[0] == "transformers":
        raise ValueError(
            f"cache is a transformers {type(cache).__name__}, whose update(key, value, layer_idx) order and return "
            "value differ from mlcore's update(layer_idx, k, v, index) -> (k, v, key_index); pass an mlcore cache "
            "(mlcore.inference.DynamicCache(), StaticCache(...), ...) instead")
    # what isinstance(cache, KVCache) checks (the members exist), without the runtime Protocol machinery,
    # which costs tens of microseconds: this runs once per forward, i.e. once per decoded token
    if not all(hasattr(cache, name) for name in _MEMBERS):
        raise ValueError(f"cache must implement mlcore's KVCache protocol (update, get_seq_length, crop), got "
                         f"{type(cache).__name__}")
