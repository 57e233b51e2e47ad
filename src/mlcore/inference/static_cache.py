"""StaticCache: a KV cache preallocated to a maximum length and written in place (gpt-fast's ``KVCache``).

Memory layout, per layer (allocated once, on the layer's first update, or up front by :meth:`for_model`):

    keys[l], values[l]   (B, Hkv, max_len, D)   -- slot t holds column t; written in place by ``index_copy_``
                                                    at slots [length, length + T) (one op per tensor)
    index                (B, max_len)            -- column of each slot, -1 where nothing is written yet
                                                    (or the token is padding); shared by every layer

A decode step writes one slot per layer and allocates nothing, so its shapes do not change from step to step
(with ``full_view=True`` the layers attend over the whole buffer, masked by ``index``): that is what CUDA graphs
and ``torch.compile(mode="reduce-overhead")`` need. Eagerly, the default ``full_view=False`` hands attention the
written prefix ``[:, :, :length]`` as a view, which costs no copy and no attention over empty slots.
A compiled step (:mod:`mlcore.inference.compiled`) writes through :meth:`StaticCache.update_at` instead, at a
slot given as a device tensor (no Python int that changes per step), and counts the column afterwards with
:meth:`StaticCache.advance`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mlcore.inference.cache_utils import check_buffer, check_int, check_update, crop_length


class StaticCache:
    """A preallocated KV cache of ``max_len`` columns; speaks mlcore's KVCache protocol.

    Args:
        max_len: the most columns (prompt + generated tokens, padding included) it will hold.
        full_view: return the whole (B, Hkv, max_len, D) buffers (static shapes, for compiled decoding)
            instead of the written prefix.
    """

    def __init__(self, max_len: int, *, full_view: bool = False) -> None:
        if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1:
            raise ValueError(f"max_len must be a positive int, got {max_len!r}")
        self.max_len = max_len
        self.full_view = full_view
        self.keys: dict[int, Tensor] = {}
        self.values: dict[int, Tensor] = {}
        self.index: Tensor | None = None  # (B, max_len), shared by all layers
        self._length: dict[int, int] = {}
        self._index_view: tuple[int, Tensor] | None = None
        self._slot: tuple[int, int, Tensor] | None = None

    @property
    def dtype(self) -> torch.dtype | None:
        """The float dtype the buffers hold (what the model's keys must be), None before any allocation."""
        buffers = next(iter(self.keys.values()), None)
        return None if buffers is None else buffers.dtype

    @classmethod
    def for_model(cls, model: nn.Module, batch: int, max_len: int, *, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None, full_view: bool = False) -> StaticCache:
        """Allocate every layer of an mlcore ``Transformer`` up front (the memory is then reserved at once)."""
        c = model.config
        check_int("batch", batch, 1)
        p = next(model.parameters())
        dtype = dtype or p.dtype
        device = device or p.device
        cache = cls(max_len, full_view=full_view)
        for layer in range(c.n_layers):
            cache._allocate(layer, batch, c.n_kv_heads, c.head_dim, dtype, torch.device(device))
        return cache

    def _allocate(self, layer_idx: int, B: int, Hkv: int, D: int, dtype: torch.dtype, device: torch.device) -> None:
        self.keys[layer_idx] = torch.zeros(B, Hkv, self.max_len, D, dtype=dtype, device=device)
        self.values[layer_idx] = torch.zeros(B, Hkv, self.max_len, D, dtype=dtype, device=device)
        self._length[layer_idx] = 0
        if self.index is None:
            self.index = torch.full((B, self.max_len), -1, dtype=torch.long, device=device)

    def update(self, layer_idx: int, k: Tensor, v: Tensor, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Write k, v (B, Hkv, T, D) and index (B, T) at slots [length, length + T) in place; return the view."""
        check_update(layer_idx, k, v, index)
        B, Hkv, T, D = k.shape
        start = self._length.get(layer_idx, 0)
        end = start + T
        if end > self.max_len:  # before allocating: a refused update changes nothing
            raise ValueError(f"StaticCache is full: {start} columns cached + {T} new > max_len={self.max_len}; "
                             "allocate a longer cache (max_len = prompt length + max_new_tokens)")
        if layer_idx not in self.keys:
            self._allocate(layer_idx, B, Hkv, D, k.dtype, k.device)
        buf_k, buf_v = self.keys[layer_idx], self.values[layer_idx]
        check_buffer(buf_k, layer_idx, B, Hkv, D, "StaticCache")
        slot = self._slots(start, T, k.device)
        buf_k.index_copy_(2, slot, k if k.dtype == buf_k.dtype else k.to(buf_k.dtype))  # one op writes T slots
        buf_v.index_copy_(2, slot, v if v.dtype == buf_v.dtype else v.to(buf_v.dtype))
        self._length[layer_idx] = end
        assert self.index is not None
        if self._index_view is None or self._index_view[0] != end:  # the first layer of this step writes it
            self.index[:, start:end] = index
            self._index_view = (end, self.index if self.full_view else self.index[:, :end])
        if self.full_view:
            return buf_k, buf_v, self._index_view[1]
        return buf_k.narrow(2, 0, end), buf_v.narrow(2, 0, end), self._index_view[1]

    def update_at(self, layer_idx: int, k: Tensor, v: Tensor, index: Tensor,
                  slots: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Write k, v (B, Hkv, T, D) and index (B, T) at the slots named by the tensor ``slots`` (T,) in place;
        return the whole buffers (B, Hkv, max_len, D) and the index (B, max_len), whatever ``full_view`` says.

        For compiled decoding (:mod:`mlcore.inference.compiled`): the write position is a device tensor and no
        Python int changes from step to step, so one traced graph serves every step. The lengths are neither read
        nor changed here: call :meth:`advance` after the step (it checks the capacity). The layer must already
        be allocated (:meth:`for_model`, or an earlier :meth:`update`)."""
        check_update(layer_idx, k, v, index)
        if layer_idx not in self.keys:
            raise ValueError(f"StaticCache.update_at: layer {layer_idx} is not allocated (use StaticCache.for_model "
                             "or a prefill through update first)")
        if slots.dim() != 1 or slots.shape[0] != k.shape[2] or slots.dtype != torch.long:
            raise ValueError(f"slots must be a long (T,) = ({k.shape[2]},) tensor, got {tuple(slots.shape)} "
                             f"{slots.dtype}")
        buf_k, buf_v = self.keys[layer_idx], self.values[layer_idx]
        check_buffer(buf_k, layer_idx, k.shape[0], k.shape[1], k.shape[3], "StaticCache")
        buf_k.index_copy_(2, slots, k if k.dtype == buf_k.dtype else k.to(buf_k.dtype))
        buf_v.index_copy_(2, slots, v if v.dtype == buf_v.dtype else v.to(buf_v.dtype))
        self.write_index(slots, index)  # the same values from every layer of one step
        assert self.index is not None
        return buf_k, buf_v, self.index

    def write_index(self, slots: Tensor, index: Tensor) -> None:
        """Record the column indices ``index`` (B, T) of the keys written at ``slots`` (T,) by :meth:`update_at` or
        by :class:`mlcore.inference.eager_step.EagerDecodeStep` (which writes the buffers itself)."""
        if self.index is None:
            raise ValueError("StaticCache.write_index: nothing is allocated yet")
        self.index.index_copy_(1, slots, index)

    def advance(self, n: int) -> None:
        """Count ``n`` more columns as written in every layer (after :meth:`update_at` wrote them)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"advance takes an int >= 0, got {n!r}")
        longest = max(self._length.values(), default=0)
        if longest + n > self.max_len:
            raise ValueError(f"StaticCache is full: {longest} columns cached + {n} new > max_len={self.max_len}")
        for layer in self._length:
            self._length[layer] += n
        self._index_view = None

    def _slots(self, start: int, T: int, device: torch.device) -> Tensor:
        """Slot numbers [start, start + T) as a tensor, made once per step and shared by every layer."""
        if self._slot is None or self._slot[0] != start or self._slot[1] != T:
            self._slot = (start, T, torch.arange(start, start + T, device=device))
        return self._slot[2]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Columns written for ``layer_idx`` (0 before its first update)."""
        return self._length.get(layer_idx, 0)

    def crop(self, n: int) -> None:
        """Forget every column from ``n`` on (slots are overwritten later; their index becomes -1)."""
        longest = max(self._length.values(), default=0)
        n = crop_length(n, longest)
        for layer in self._length:
            self._length[layer] = min(self._length[layer], n)
        if self.index is not None:
            self.index[:, n:] = -1
        self._index_view = None

    def reset(self) -> None:
        """Empty the cache, keeping its memory for the next sequence."""
        self.crop(0)

    def nbytes(self) -> int:
        """Bytes reserved (the whole buffer, written or not)."""
        tensors = [*self.keys.values(), *self.values.values()] + ([self.index] if self.index is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    def __repr__(self) -> str:
        return f"StaticCache(max_len={self.max_len}, layers={len(self.keys)}, seq_len={self.get_seq_length()})"
