"""One ragged batch over a paged KV pool: rows of different lengths, each with its own block table.

A continuous-batching engine (Yu et al. 2022, Orca) runs, in one forward, sequences that sit at different
lengths: one is in its prefill (many new tokens), the others decode (one new token each). ``Transformer.forward``
knows one ``past`` per batch and builds the causal mask from **key indices** (:mod:`mlcore.attention.inputs`):
query ``i`` attends key ``j`` iff ``0 <= idx_j <= idx_i``. :class:`PagedBatch` makes a ragged batch fit that rule
by *right-aligning every row at column* ``L = max_seq_len``:

    row b holds n_b cached tokens and T_b new ones, left-padded to T = max_b T_b
    past P      = L - T                      (so P + T = L never exceeds the model's length)
    new token t (of T) has query / key index P + t; a pad (t < T - T_b) is not written and has no key
    cached column c of row b gets key index c + s_b with s_b = L - n_b - T_b   (>= 0 as n_b + T_b <= L)

The shift ``s_b`` is the same for all of a row's keys and queries, so every distance ``idx_i - idx_j`` equals the
distance of the real columns: causal masks, sliding windows and ALiBi biases come out exactly as for the row
alone. Positions (RoPE) are passed separately as ``position_ids = n_b + t'``, the true column of each token.

Storage is a :class:`~mlcore.inference.PagedCache`'s pools ``k_pool[l], v_pool[l]`` (num_blocks, Hkv, bs, D);
the block tables come from the caller (the engine's block manager), so blocks may be shared read-only between
rows (prefix caching): only the new tokens are written, always into blocks the caller gave that row alone.

    view = PagedBatch(cache, tables, starts, new_lengths, max_seq_len)
    logits = model(ids, attention_mask=view.attention_mask, cache=view, position_ids=view.position_ids,
                   logits_to_keep=1)           # (B, 1, V): each row's last new token
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mlcore.inference.cache_utils import check_update
from mlcore.inference.paged_cache import PagedCache


class PagedBatch:
    """A KVCache-protocol view of ragged rows over ``cache``'s pools (see the module docstring).

    Args:
        cache: the PagedCache whose ``k_pool`` / ``v_pool`` hold the blocks (allocated on first write).
        tables: per row, its block ids in column order (enough blocks for ``starts[b] + new_lengths[b]``).
        starts: per row, the columns already cached (n_b).
        new_lengths: per row, the new tokens of this forward (T_b >= 1).
        max_seq_len: the model's length L; every row must satisfy n_b + T_b <= L.
    """

    def __init__(self, cache: PagedCache, tables: list[list[int]], starts: list[int], new_lengths: list[int],
                 max_seq_len: int, device: torch.device | str = "cpu") -> None:
        B = len(tables)
        if B == 0 or len(starts) != B or len(new_lengths) != B:
            raise ValueError(f"tables, starts and new_lengths must be non-empty lists of one length, got "
                             f"{B}, {len(starts)}, {len(new_lengths)}")
        bs = cache.block_size
        for b, (tab, n, t) in enumerate(zip(tables, starts, new_lengths)):
            if t < 1 or n < 0 or n + t > max_seq_len:
                raise ValueError(f"row {b}: need new_lengths >= 1, starts >= 0 and starts + new <= max_seq_len="
                                 f"{max_seq_len}, got start {n}, new {t}")
            if len(tab) * bs < n + t:
                raise ValueError(f"row {b}: {len(tab)} blocks of {bs} cannot hold {n + t} columns")
        self.cache, self.device = cache, torch.device(device)
        self.B, self.T, self.L = B, max(new_lengths), max_seq_len
        self.starts, self.new_lengths = list(starts), list(new_lengths)
        T, L, dev = self.T, self.L, self.device
        ends = [n + t for n, t in zip(starts, new_lengths)]
        self.Lk = max(ends)
        n_blocks = math.ceil(self.Lk / bs)
        self.table = torch.tensor([(tab + [0] * n_blocks)[:n_blocks] for tab in tables], dtype=torch.long,
                                  device=dev)  # (B, n_blocks); padding rows point at block 0, masked by index -1
        # where the new tokens go: flat (row, t) sources and (block, slot) destinations
        rows, ts, blks, slots = [], [], [], []
        for b, (tab, n, t_b) in enumerate(zip(tables, starts, new_lengths)):
            for j in range(t_b):
                col = n + j
                rows.append(b)
                ts.append(T - t_b + j)
                blks.append(tab[col // bs])
                slots.append(col % bs)
        self._src = (torch.tensor(rows, device=dev), torch.tensor(ts, device=dev))
        self._dst = (torch.tensor(blks, device=dev), torch.tensor(slots, device=dev))
        col = torch.arange(self.Lk, device=dev)[None, :]  # (1, Lk)
        end = torch.tensor(ends, device=dev)[:, None]  # (B, 1)
        shift = L - end  # s_b = L - n_b - T_b
        self.key_index = torch.where(col < end, col + shift, -1)  # (B, Lk), the same tensor for every layer
        t = torch.arange(T, device=dev)[None, :]
        t_b = torch.tensor(new_lengths, device=dev)[:, None]
        real = t >= T - t_b  # (B, T) left padding is False
        self.position_ids = torch.where(real, torch.tensor(starts, device=dev)[:, None] + t - (T - t_b), 0)
        self.attention_mask: Tensor | None = None
        if not bool(real.all()):
            self.attention_mask = torch.cat([torch.ones(B, L - T, dtype=torch.long, device=dev), real.long()], 1)

    def input_ids(self, tokens: list[list[int]], pad_id: int = 0) -> Tensor:
        """(B, T) left-padded ids of each row's new tokens."""
        return torch.tensor([[pad_id] * (self.T - len(r)) + list(r) for r in tokens], dtype=torch.long,
                            device=self.device)

    def update(self, layer_idx: int, k: Tensor, v: Tensor, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Write the rows' real new k, v (B, Hkv, T, D) to their blocks; return (B, Hkv, Lk, D) keys, values and
        the (B, Lk) key indices."""
        check_update(layer_idx, k, v, index)
        if k.shape[0] != self.B or k.shape[2] != self.T:
            raise ValueError(f"this PagedBatch expects (B, T) = ({self.B}, {self.T}), got k {tuple(k.shape)}")
        cache = self.cache
        if layer_idx not in cache.k_pool:
            cache._allocate(layer_idx, k.shape[1], k.shape[3], k.dtype, k.device)
        pk, pv = cache.k_pool[layer_idx], cache.v_pool[layer_idx]
        rows, ts = self._src
        blk, slot = self._dst
        pk[blk, :, slot] = k[rows, :, ts].to(pk.dtype)  # (N, Hkv, D) into (block, :, slot)
        pv[blk, :, slot] = v[rows, :, ts].to(pv.dtype)
        B, n = self.table.shape
        Hkv, bs, D = pk.shape[1], pk.shape[2], pk.shape[3]
        keys = pk[self.table].transpose(1, 2).reshape(B, Hkv, n * bs, D)[:, :, :self.Lk]
        values = pv[self.table].transpose(1, 2).reshape(B, Hkv, n * bs, D)[:, :, :self.Lk]
        return keys, values, self.key_index

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """The batch's ``past`` P = L - T (see the module docstring), a Python int."""
        return self.L - self.T

    def crop(self, n: int) -> None:
        raise ValueError("a PagedBatch is a one-forward view; crop the engine's sequences instead")


def allocate_pool(model: torch.nn.Module, num_blocks: int, block_size: int = 16, *,
                  device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> PagedCache:
    """An empty PagedCache with every layer's (num_blocks, Hkv, block_size, D) pools allocated for ``model``."""
    cache = PagedCache(num_blocks, block_size)
    c = model.config
    p = next(model.parameters())
    dev = torch.device(device) if device is not None else p.device
    for layer in range(c.n_layers):
        cache._allocate(layer, c.n_kv_heads, c.head_dim, dtype or p.dtype, dev)
    return cache
