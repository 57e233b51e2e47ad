"""DynamicCache: the KV cache that grows by concatenation (transformers' default ``DynamicCache`` does the same).

Memory layout, per layer:

    keys[l], values[l]   (B, Hkv, Tk, D)   -- one tensor, re-allocated (torch.cat) at every step
    index                (B, Tk)            -- column of each key, -1 at padding (shared by all layers)

Simple and exact, but every step allocates a new (B, Hkv, Tk + 1, D) tensor and copies the old one, so a
decode of N tokens copies O(N^2) bytes and its shapes change each step (no CUDA graphs). See
:class:`~mlcore.inference.static_cache.StaticCache` for the preallocated alternative.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mlcore.inference.cache_utils import SharedIndex, check_buffer, check_update, crop_length


class DynamicCache:
    """A list of per-layer key/value tensors grown with ``torch.cat``; speaks mlcore's KVCache protocol."""

    def __init__(self) -> None:
        self.keys: dict[int, Tensor] = {}
        self.values: dict[int, Tensor] = {}
        self._index: dict[int, Tensor] = {}
        self._shared = SharedIndex()

    def update(self, layer_idx: int, k: Tensor, v: Tensor, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Append k, v (B, Hkv, T, D) and index (B, T); return all keys, values (B, Hkv, Tk, D) and indices."""
        check_update(layer_idx, k, v, index)
        if layer_idx not in self.keys:
            self.keys[layer_idx], self.values[layer_idx] = k, v
            self._index[layer_idx] = self._shared.concat(None, index)
        else:
            if self.keys[layer_idx].shape[0] != k.shape[0]:
                raise ValueError(f"batch size changed from {self.keys[layer_idx].shape[0]} to {k.shape[0]} "
                                 f"in layer {layer_idx}; use a new cache for a new batch")
            check_buffer(self.keys[layer_idx], layer_idx, k.shape[0], k.shape[1], k.shape[3], "DynamicCache")
            self.keys[layer_idx] = torch.cat([self.keys[layer_idx], k], dim=2)
            self.values[layer_idx] = torch.cat([self.values[layer_idx], v], dim=2)
            self._index[layer_idx] = self._shared.concat(self._index[layer_idx], index)
        return self.keys[layer_idx], self.values[layer_idx], self._index[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Columns cached for ``layer_idx`` (0 before its first update)."""
        return self.keys[layer_idx].shape[2] if layer_idx in self.keys else 0

    def crop(self, n: int) -> None:
        """Keep the first ``n`` columns of every layer (a negative ``n`` drops the last ``-n``)."""
        if not self.keys:
            crop_length(n, 0)
            return
        n = crop_length(n, max(k.shape[2] for k in self.keys.values()))
        self.keys = {i: k[:, :, :n] for i, k in self.keys.items()}
        self.values = {i: v[:, :, :n] for i, v in self.values.items()}
        shared = next(iter(self._index.values()))[:, :n]
        self._index = {i: shared for i in self._index}  # one shared tensor again: one mask per step

    def nbytes(self) -> int:
        """Bytes held by keys, values and indices."""
        tensors = [*self.keys.values(), *self.values.values(), *{id(i): i for i in self._index.values()}.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def __repr__(self) -> str:
        return f"DynamicCache(layers={len(self.keys)}, seq_len={self.get_seq_length()})"
