"""QuantizedCache: keys and values stored as int8 with one scale per (batch, head, token); dequantized on read.

Symmetric absmax quantization of each token's D values of one head (the int8 grid of Jacob et al. 2018;
per-token KV scales as in KIVI / KVQuant, without their per-channel key refinements):

    s = max_d |x_d| / 127,      q_d = round(x_d / s) in [-127, 127],      x_d ~ q_d * s,   |x_d - q_d s| <= s / 2

Memory layout, per layer (preallocated by :meth:`for_model`; otherwise grown by doubling):

    codes_k[l], codes_v[l]     (B, Hkv, capacity, D)   int8
    scales_k[l], scales_v[l]   (B, Hkv, capacity)      float32
    index                      (B, capacity)           column of each slot, -1 = empty / padding (all layers)

Per token and head: D bytes + 4 for the scale, against 2D (bf16) or 4D (fp32): with D = 64, 1.9x less than
bf16 and 3.8x less than fp32. Each step dequantizes the whole cache into the compute dtype (a fused kernel
would read int8 inside attention instead); the tokens of the current call are attended at full precision
(they are in hand) and stored as int8 for the steps after.

The codes and scales equal ``mlcore.quant.quantize(x, "int8")`` (symmetric, one scale per row of the last
dimension); this file has its own few lines because that entry point checks its input for NaN / Inf, a host
sync that every layer of every decode step would pay.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mlcore.inference.cache_utils import check_update, crop_length


def quantize_per_token(x: Tensor) -> tuple[Tensor, Tensor]:
    """x (..., D) float -> (codes (..., D) int8, scales (...) float32): symmetric absmax over the last dim."""
    xf = x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row: any scale is exact
    codes = torch.clamp(torch.round(xf / scale), -127, 127).to(torch.int8)
    return codes, scale.squeeze(-1)


def dequantize_per_token(codes: Tensor, scales: Tensor, dtype: torch.dtype) -> Tensor:
    """codes (..., D) int8 and scales (...) -> ``codes * scale`` (..., D), computed in float32, cast to dtype."""
    return (codes.float() * scales.unsqueeze(-1)).to(dtype)


class QuantizedCache:
    """An int8 KV cache (one float32 scale per batch row, head and token); speaks mlcore's KVCache protocol.

    Args:
        capacity: columns to allocate at the first update (grown by doubling when exceeded).
    """

    def __init__(self, capacity: int = 256) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        self.capacity = capacity
        self.codes_k: dict[int, Tensor] = {}
        self.codes_v: dict[int, Tensor] = {}
        self.scales_k: dict[int, Tensor] = {}
        self.scales_v: dict[int, Tensor] = {}
        self.index: Tensor | None = None
        self._dtype: dict[int, torch.dtype] = {}
        self._length: dict[int, int] = {}
        self._index_view: tuple[int, Tensor] | None = None

    @property
    def dtype(self) -> torch.dtype | None:
        """The float dtype the codes dequantize to (what the model's keys must be), None before any allocation."""
        return next(iter(self._dtype.values()), None)

    @classmethod
    def for_model(cls, model: nn.Module, batch: int, max_len: int, *, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> QuantizedCache:
        """Allocate ``max_len`` columns for every layer of an mlcore ``Transformer`` up front."""
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        c = model.config
        p = next(model.parameters())
        cache = cls(max_len)
        dev = torch.device(device) if device is not None else p.device
        for layer in range(c.n_layers):
            cache._allocate(layer, batch, c.n_kv_heads, c.head_dim, dtype or p.dtype, dev)
        return cache

    def _allocate(self, layer_idx: int, B: int, Hkv: int, D: int, dtype: torch.dtype, device: torch.device) -> None:
        cap = self.capacity
        self.codes_k[layer_idx] = torch.zeros(B, Hkv, cap, D, dtype=torch.int8, device=device)
        self.codes_v[layer_idx] = torch.zeros(B, Hkv, cap, D, dtype=torch.int8, device=device)
        self.scales_k[layer_idx] = torch.ones(B, Hkv, cap, dtype=torch.float32, device=device)
        self.scales_v[layer_idx] = torch.ones(B, Hkv, cap, dtype=torch.float32, device=device)
        self._dtype[layer_idx] = dtype
        self._length[layer_idx] = 0
        if self.index is None:
            self.index = torch.full((B, cap), -1, dtype=torch.long, device=device)

    def _grow(self, layer_idx: int, need: int) -> None:
        """Double the layer's buffers (and the shared index) until ``need`` columns fit."""
        cap = self.codes_k[layer_idx].shape[2]
        if need <= cap:
            return
        new = max(need, 2 * cap)
        for store, fill in ((self.codes_k, 0), (self.codes_v, 0), (self.scales_k, 1), (self.scales_v, 1)):
            old = store[layer_idx]
            grown = old.new_full((*old.shape[:2], new, *old.shape[3:]), fill)
            grown[:, :, :cap] = old
            store[layer_idx] = grown
        assert self.index is not None
        if self.index.shape[1] < new:
            grown_index = self.index.new_full((self.index.shape[0], new), -1)
            grown_index[:, : self.index.shape[1]] = self.index
            self.index = grown_index
            self._index_view = None
        self.capacity = max(self.capacity, new)

    def update(self, layer_idx: int, k: Tensor, v: Tensor, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Quantize k, v (B, Hkv, T, D) into slots [length, length + T); return all keys, values, indices.

        The returned keys and values are the dequantized past followed by the exact new ones.
        """
        check_update(layer_idx, k, v, index)
        B, Hkv, T, D = k.shape
        if layer_idx not in self.codes_k:
            self._allocate(layer_idx, B, Hkv, D, k.dtype, k.device)
        codes_k = self.codes_k[layer_idx]
        if (codes_k.shape[0], codes_k.shape[1], codes_k.shape[3]) != (B, Hkv, D):
            raise ValueError(f"layer {layer_idx}: this QuantizedCache holds (B, Hkv, D) = "
                             f"{(codes_k.shape[0], codes_k.shape[1], codes_k.shape[3])}, got {(B, Hkv, D)}")
        start = self._length[layer_idx]
        end = start + T
        self._grow(layer_idx, end)
        dtype = self._dtype[layer_idx]
        past_k = dequantize_per_token(self.codes_k[layer_idx][:, :, :start], self.scales_k[layer_idx][:, :, :start],
                                      dtype)
        past_v = dequantize_per_token(self.codes_v[layer_idx][:, :, :start], self.scales_v[layer_idx][:, :, :start],
                                      dtype)
        for codes, scales, x in ((self.codes_k, self.scales_k, k), (self.codes_v, self.scales_v, v)):
            q, s = quantize_per_token(x)
            codes[layer_idx][:, :, start:end] = q
            scales[layer_idx][:, :, start:end] = s
        self._length[layer_idx] = end
        assert self.index is not None
        if self._index_view is None or self._index_view[0] != end:  # the first layer of this step writes it
            self.index[:, start:end] = index
            self._index_view = (end, self.index[:, :end])
        out_k = torch.cat([past_k, k.to(dtype)], dim=2)
        out_v = torch.cat([past_v, v.to(dtype)], dim=2)
        return out_k, out_v, self._index_view[1]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Columns cached for ``layer_idx`` (0 before its first update)."""
        return self._length.get(layer_idx, 0)

    def crop(self, n: int) -> None:
        """Forget every column from ``n`` on (their slots are overwritten later)."""
        n = crop_length(n, max(self._length.values(), default=0))
        for layer in self._length:
            self._length[layer] = min(self._length[layer], n)
        if self.index is not None:
            self.index[:, n:] = -1
        self._index_view = None

    def nbytes(self) -> int:
        """Bytes held: int8 codes, float32 scales and the index, for the whole allocated capacity."""
        tensors = [*self.codes_k.values(), *self.codes_v.values(), *self.scales_k.values(), *self.scales_v.values()]
        if self.index is not None:
            tensors.append(self.index)
        return sum(t.numel() * t.element_size() for t in tensors)

    def __repr__(self) -> str:
        return f"QuantizedCache(capacity={self.capacity}, layers={len(self.codes_k)}, seq_len={self.get_seq_length()})"
