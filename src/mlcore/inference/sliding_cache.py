"""SlidingWindowCache: a ring buffer of the last ``window`` tokens plus ``sinks`` first tokens (bounded memory).

Mistral's sliding-window attention (Jiang et al. 2023) lets query ``i`` see keys ``j`` with ``i - window < j <= i``,
so a decoder only ever needs the last ``window`` keys: a ring buffer of ``window`` slots, column ``t`` in slot
``t % window``. StreamingLLM (Xiao et al. 2023, "Efficient Streaming Language Models with Attention Sinks")
adds the first ``sinks`` tokens, kept forever: models park attention on the first tokens, and evicting them is
what breaks plain window attention past the training length.

Memory layout, per layer (allocated once; nothing grows):

    keys[l], values[l]   (B, Hkv, S' + C, D)   S' = sinks + 1 (0 without sinks), C = window + rollback - 1
                                              [0, S): the sinks,  S: a spare slot,  [S', S' + C): the ring
    sink_keys[l]         (B, Hkv, S + 1, D)     the sink keys as RoPE rotated them (at their true positions)
    ring_index (B, C), sink_index (B, S)       column of each slot, -1 = empty / padding

The sinks of a row are its first ``sinks`` real tokens (left padding skipped); they do not enter the ring.

**Exact** (equal to a full forward): a model whose own sliding window equals ``window`` (sinks = 0), e.g.
Mistral; any model while the sequence is no longer than ``window``. A model that slides only some layers
(``config.layer_types``, e.g. Qwen2 with ``max_window_layers``) keeps every column of its full-attention layers
(``full_layers``, a growing :class:`~mlcore.inference.DynamicCache`, as transformers' hybrid caches do), so it is
exact too; its memory is then bounded only in the sliding layers, and it does not stream past ``max_seq_len``.
``update`` returns the ring plus the new tokens, so a T-token update (a prefill longer than the window) still
sees ``window - 1 + T`` keys; the model's own mask then picks each query's window. **Not exact**: without its
own window, a model attends, in a T-token update, to up to ``T - 1`` keys older than the window (each query
sees the window of the first query), as StreamingLLM's prefill; decode steps (T = 1) see exactly the sinks and the last ``window`` tokens.

Sinks: keys are cached already rotated by RoPE at their true positions. StreamingLLM gives positions
within the cache, i.e. the sinks sit just before the oldest window key. RoPE scores depend only on the
offset ``q_pos - k_pos``, so the window keys are right as they are; each step the few sink keys are rotated
by the angle ``delta = virtual - true`` (rotations compose, ``R(a) R(b) = R(a + b)``), from the stored
true-position copy (no drift), and get the virtual columns as key indices (so the mask and ALiBi see the
same offsets). This assumes a row's positions are its columns minus its left padding (as ``generate``
makes them). With the model's own window ``W``, sinks are visible only if ``window + sinks <= W``
(:meth:`for_model` checks it). Dynamic-NTK RoPE changes its frequencies with length: not exact there.

``streaming``: the cache keeps every attention offset below ``window + sinks``, so a RoPE / ALiBi / NoPE
model may run past ``max_seq_len`` with bounded memory and offsets it saw in training (when
``window + sinks <= max_seq_len``); learned absolute positions cannot (``Transformer`` refuses them anyway).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mlcore.inference.cache_utils import check_buffer, check_int, check_update, crop_length
from mlcore.inference.dynamic_cache import DynamicCache
from mlcore.positional import apply_rotary


@dataclass
class _Step:
    """What one forward step computes once for all layers."""

    start: int
    end: int
    ring_slots: Tensor  # (w,) ring slots of the last w new tokens
    in_place: bool  # write the ring first and return it (no copy); else return cat(ring, new) and write after
    index: Tensor  # key indices returned to every layer
    sink_slot: Tensor | None = None  # (B, T) sink slot of each new token (S = the spare slot: not a sink)
    cos: Tensor | None = None  # (B, S, rotary_dim): rotation of each sink by its delta
    sin: Tensor | None = None


def can_stream(config: Any, window: int, sinks: int) -> bool:
    """Whether a model with ``config`` can generate past ``max_seq_len`` through a window of ``window`` columns
    plus ``sinks``: learned positions end at ``max_seq_len``, and a longer window would need positions the model
    never saw."""
    return config.position != "learned" and window + sinks <= config.max_seq_len


class SlidingWindowCache:
    """The last ``window`` columns in a ring buffer, plus each row's first ``sinks`` tokens; KVCache protocol.

    Args:
        window: columns kept (the model's ``sliding_window`` for an exact Mistral).
        sinks: first tokens kept forever (StreamingLLM uses 4).
        rope: the model's ``RotaryEmbedding`` (``model.rope``), needed to re-rotate sinks of a RoPE model.
        rollback: ``crop`` can always drop the last ``rollback`` columns (the ring keeps ``rollback - 1``
            spare slots); speculative decoding needs its number of draft tokens (``num_draft_tokens``).
        streaming: let a model run past ``max_seq_len`` (see the module docstring).
        full_layers: layers that keep every column (full attention in a model that slides only some layers).
    """

    def __init__(self, window: int, sinks: int = 0, *, rope: nn.Module | None = None, rollback: int = 0,
                 streaming: bool = True, full_layers: Iterable[int] = ()) -> None:
        self.window = check_int("window", window, 1)
        self.sinks = check_int("sinks", sinks, 0)
        self.rollback = check_int("rollback", rollback, 0)
        self.rope = rope
        self.streaming = bool(streaming)
        self.capacity = window + max(rollback - 1, 0)
        self._head = sinks + 1 if sinks else 0
        self.keys: dict[int, Tensor] = {}
        self.values: dict[int, Tensor] = {}
        self.sink_keys: dict[int, Tensor] = {}
        self.ring_index: Tensor | None = None
        self.sink_index: Tensor | None = None
        self.n_sinks: Tensor | None = None  # (B,) sinks filled per row
        self._length: dict[int, int] = {}
        self._lost = 0  # columns < _lost were overwritten in the ring (a crop does not bring them back)
        self._step: _Step | None = None
        self.full_layers = frozenset(full_layers)
        self._full = DynamicCache()  # the full_layers' keys and values, every column

    @property
    def dtype(self) -> torch.dtype | None:
        """The float dtype the ring buffers hold (what the model's keys must be), None before any allocation."""
        buffers = next(iter(self.keys.values()), None)
        return None if buffers is None else buffers.dtype

    @classmethod
    def for_model(cls, model: nn.Module, batch: int, max_len: int, *, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None, window: int | None = None, sinks: int = 0,
                  rollback: int = 0) -> SlidingWindowCache:
        """A cache for an mlcore ``Transformer``, allocated up front (``max_len`` does not bound it).

        ``window`` defaults to the model's ``sliding_window`` minus ``sinks`` (else ``max_seq_len - sinks``). In a
        model that slides only some layers, the others keep every column (``full_layers``).
        """
        c = model.config
        check_int("batch", batch, 1)
        check_int("sinks", sinks, 0)
        own = c.sliding_window
        if window is None:
            window = (own or c.max_seq_len) - sinks
            if window < 1:
                raise ValueError(f"sinks={sinks} leaves no room for a window in {own or c.max_seq_len} columns")
        check_int("window", window, 1)
        if own is not None and sinks and window + sinks > own:
            raise ValueError(f"window + sinks = {window} + {sinks} exceeds the model's sliding_window={own}: its "
                             f"own mask would hide the sinks; use window <= {own - sinks}")
        full = [i for i in range(c.n_layers) if c.layer_window(i) is None] if own is not None else []
        streaming = can_stream(c, window, sinks) and not full
        cache = cls(window, sinks, rope=getattr(model, "rope", None), rollback=rollback, streaming=streaming,
                    full_layers=full)
        p = next(model.parameters())
        dev = torch.device(device) if device is not None else p.device
        for layer in range(c.n_layers):
            if layer not in cache.full_layers:
                cache._allocate(layer, batch, c.n_kv_heads, c.head_dim, dtype or p.dtype, dev)
        return cache

    def _allocate(self, layer_idx: int, B: int, Hkv: int, D: int, dtype: torch.dtype, device: torch.device) -> None:
        self.keys[layer_idx] = torch.zeros(B, Hkv, self._head + self.capacity, D, dtype=dtype, device=device)
        self.values[layer_idx] = torch.zeros_like(self.keys[layer_idx])
        self.sink_keys[layer_idx] = torch.zeros(B, Hkv, self._head, D, dtype=dtype, device=device)
        self._length[layer_idx] = 0
        if self.ring_index is None:
            self.ring_index = torch.full((B, self.capacity), -1, dtype=torch.long, device=device)
            self.sink_index = torch.full((B, self.sinks), -1, dtype=torch.long, device=device)
            self.n_sinks = torch.zeros(B, dtype=torch.long, device=device)

    def _plan(self, start: int, index: Tensor) -> _Step:
        """Once per step: place the new columns (sinks, ring), compute the sinks' rotation and the key indices."""
        assert self.ring_index is not None and self.sink_index is not None and self.n_sinks is not None
        B, T = index.shape
        S, C, W = self.sinks, self.capacity, self.window
        index = index.to(self.ring_index.device, torch.long)
        end = start + T
        ring_new, sink_slot = index, None
        if S:  # a row's first S real tokens become its sinks
            real = index >= 0
            rank = self.n_sinks[:, None] + real.long().cumsum(dim=1) - 1  # (B, T) rank among the row's tokens
            to_sink = real & (rank < S)
            sink_slot = torch.where(to_sink, rank, S)  # S = the spare slot, a dump for non-sinks
            ext = torch.cat([self.sink_index, self.sink_index.new_full((B, 1), -1)], dim=1)
            self.sink_index = ext.scatter(1, sink_slot, index)[:, :S]
            self.n_sinks = self.n_sinks + to_sink.sum(dim=1)
            ring_new = torch.where(to_sink, -1, index)
        self._lost = max(self._lost, end - C)  # the ring now holds at most columns [end - C, end)
        w = min(T, C)
        ring_slots = torch.arange(end - w, end, device=index.device) % C
        in_place = T <= C - W + 1  # writing first evicts only columns no query of this step can see
        visible = start - W  # a key is visible to the first query iff its column > start - W
        if in_place:
            self.ring_index[:, ring_slots] = ring_new[:, T - w:]
            ring = torch.where(self.ring_index > visible, self.ring_index, -1)
        else:
            old = torch.where(self.ring_index > visible, self.ring_index, -1)
            self.ring_index[:, ring_slots] = ring_new[:, T - w:]
            ring = torch.cat([old, ring_new], dim=1)
        step = _Step(start, end, ring_slots, in_place, ring, sink_slot)
        if S:
            # Sinks sit just before the oldest visible window key: virtual column oldest - n_sinks + r.
            big = 1 << 62  # above any column (and no overflow below)
            oldest = torch.where(ring >= 0, ring, big).amin(dim=1, keepdim=True)  # (B, 1)
            r = torch.arange(S, device=index.device)
            filled = self.sink_index >= 0
            virtual = oldest - self.n_sinks[:, None] + r
            delta = torch.where(filled & (oldest < big), virtual - self.sink_index, 0)  # (B, S) >= 0
            head = torch.where(filled, self.sink_index + delta, -1)
            step.index = torch.cat([head, head.new_full((B, 1), -1), ring], dim=1)
            if self.rope is not None:
                cos, sin = self.rope(delta)  # (B, S, rotary_dim); undo YaRN's attention factor (k has it)
                f = float(getattr(self.rope, "attention_factor", 1.0))
                step.cos, step.sin = cos / f, sin / f
        return step

    def update(self, layer_idx: int, k: Tensor, v: Tensor, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Store k, v (B, Hkv, T, D) and index (B, T); return sinks + visible ring (+ new) keys and indices."""
        check_update(layer_idx, k, v, index)
        if layer_idx in self.full_layers:
            return self._full.update(layer_idx, k, v, index)
        B, Hkv, T, D = k.shape
        if layer_idx not in self.keys:
            self._allocate(layer_idx, B, Hkv, D, k.dtype, k.device)
        buf_k, buf_v = self.keys[layer_idx], self.values[layer_idx]
        check_buffer(buf_k, layer_idx, B, Hkv, D, "SlidingWindowCache")
        start = self._length[layer_idx]
        step = self._step
        if step is None or (step.start, step.end) != (start, start + T):
            step = self._step = self._plan(start, index)  # the first layer of this step
        k, v = k.to(buf_k.dtype), v.to(buf_v.dtype)
        H, S = self._head, self.sinks
        if S:
            slot = step.sink_slot[:, None, :, None].expand(B, Hkv, T, D)
            self.sink_keys[layer_idx].scatter_(2, slot, k)
            buf_v[:, :, :H].scatter_(2, slot, v)
            sk = self.sink_keys[layer_idx][:, :, :S]
            if step.cos is not None:
                sk = apply_rotary(sk, step.cos, step.sin, interleaved=bool(getattr(self.rope, "interleaved", False)))
            buf_k[:, :, :S] = sk
        self._length[layer_idx] = step.end
        w = step.ring_slots.shape[0]
        if step.in_place:
            buf_k[:, :, H + step.ring_slots] = k[:, :, T - w:]
            buf_v[:, :, H + step.ring_slots] = v[:, :, T - w:]
            return buf_k, buf_v, step.index
        out_k, out_v = torch.cat([buf_k, k], dim=2), torch.cat([buf_v, v], dim=2)
        buf_k[:, :, H + step.ring_slots] = k[:, :, T - w:]
        buf_v[:, :, H + step.ring_slots] = v[:, :, T - w:]
        return out_k, out_v, step.index

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Columns seen so far by ``layer_idx`` (all of them, not only those still held)."""
        if layer_idx in self.full_layers:
            return self._full.get_seq_length(layer_idx)
        return self._length.get(layer_idx, 0)

    def crop(self, n: int) -> None:
        """Forget columns from ``n`` on; possible while the window before ``n`` is still in the ring."""
        length = max((self.get_seq_length(layer) for layer in [*self._length, *self.full_layers]), default=0)
        n = crop_length(n, length)
        # The next query (column n) needs columns [n - window + 1, n). What the ring lost stays lost across
        # crops: two crops within the rollback each can together reach an overwritten column, so the check
        # uses every column ever written (_lost), not the current length. crop(0) needs nothing (a reset).
        if n > 0 and max(n - self.window + 1, 0) < self._lost:
            raise ValueError(f"cannot crop to {n}: the ring no longer holds columns before {self._lost} that the "
                             f"next query needs; this cache rolls back at most {self.capacity - self.window + 1} "
                             "columns from the longest length it reached (build it with a larger rollback=)")
        self._lost = min(self._lost, n)
        for layer in self._length:
            self._length[layer] = min(self._length[layer], n)
        if self.ring_index is not None:
            assert self.sink_index is not None
            self.ring_index.masked_fill_(self.ring_index >= n, -1)
            self.sink_index = self.sink_index.masked_fill(self.sink_index >= n, -1)
            self.n_sinks = (self.sink_index >= 0).sum(dim=1)
        if self._full.keys:
            self._full.crop(n)
        self._step = None

    def nbytes(self) -> int:
        """Bytes held: the ring, the sinks and their indices (fixed once allocated), and the full layers' columns."""
        tensors = [*self.keys.values(), *self.values.values(), *self.sink_keys.values()]
        tensors += [t for t in (self.ring_index, self.sink_index, self.n_sinks) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors) + self._full.nbytes()

    def __repr__(self) -> str:
        full = f", full_layers={sorted(self.full_layers)}" if self.full_layers else ""
        return (f"SlidingWindowCache(window={self.window}, sinks={self.sinks}, layers={len(self.keys)}{full}, "
                f"seq_len={self.get_seq_length()}, streaming={self.streaming})")
