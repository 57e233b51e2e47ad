"""PagedCache: KV memory in fixed-size blocks from one shared pool (Kwon et al. 2023, vLLM's PagedAttention).

A contiguous cache per sequence must reserve its longest possible length up front, and sequences of different
lengths leave holes. Paging, as an operating system does for virtual memory, removes both: memory is cut into
blocks of ``block_size`` tokens, a sequence owns a list of blocks (its **block table**) that grows one block at a
time, and a finished sequence hands its blocks back to the **free list** for the next one.

Memory layout (one pool per layer; block ids are shared by every layer, so one table serves them all):

    k_pool[l], v_pool[l]   (num_blocks, Hkv, block_size, D)
    index_pool             (num_blocks, block_size)    column index of each slot, -1 = empty / padding
    block_table[seq]       [b0, b1, ...]               column t of seq lives in block b_{t // block_size},
                                                       slot t % block_size

Attention here **gathers** a sequence's blocks through its table into a contiguous (B, Hkv, Tk, D) tensor each
step and then runs the ordinary kernel. That copy is the simple way for a reader to follow; vLLM's kernel reads
the blocks in place instead (the block table is an argument of the attention kernel), which saves the copy.

Two ways in:

- ``generate`` / ``Transformer``: the KVCache protocol, ``update(layer_idx, k, v, index)``; batch row ``b`` is
  sequence ``rows[b]`` (created on the first update, or by :meth:`PagedCache.for_model`).
- a serving engine, sequences of different lengths: :meth:`add_sequence`, :meth:`append` per sequence,
  :meth:`gather` of several sequences padded to the longest, :meth:`free`; :meth:`sequence` gives a one-row
  view with the KVCache protocol that a model forward accepts.

An exhausted pool raises a ValueError before anything is written, so no sequence's state changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mlcore.inference.cache_utils import check_int, check_update, crop_length


@dataclass
class _Sequence:
    blocks: list[int] = field(default_factory=list)  # the block table
    lengths: dict[int, int] = field(default_factory=dict)  # columns written per layer
    indexed: int = 0  # slots whose key index is written in index_pool (shared by all layers)

    def length(self, layer_idx: int = 0) -> int:
        return self.lengths.get(layer_idx, 0)


class PagedCache:
    """A pool of ``num_blocks`` blocks of ``block_size`` tokens shared by many sequences; KVCache protocol.

    Args:
        num_blocks: blocks in the pool (every layer has a pool of this many).
        block_size: tokens per block (vLLM's default is 16).
    """

    def __init__(self, num_blocks: int, block_size: int = 16) -> None:
        self.num_blocks = check_int("num_blocks", num_blocks, 1)
        self.block_size = check_int("block_size", block_size, 1)
        self.k_pool: dict[int, Tensor] = {}
        self.v_pool: dict[int, Tensor] = {}
        self.index_pool: Tensor | None = None
        self.free_list: list[int] = list(range(num_blocks - 1, -1, -1))  # a stack: pop() hands out block 0 first
        self.sequences: dict[int, _Sequence] = {}
        self.rows: list[int] | None = None  # sequence id of each batch row of update()
        self._next_id = 0
        self._version = 0  # bumped whenever a block table changes
        self._epoch = 0  # bumped whenever index_pool is written
        self._table_memo: tuple[tuple, Tensor] | None = None
        self._index_memo: tuple[tuple, Tensor] | None = None

    @property
    def dtype(self) -> torch.dtype | None:
        """The float dtype the pools hold (what the model's keys must be), None before any allocation."""
        buffers = next(iter(self.k_pool.values()), None)
        return None if buffers is None else buffers.dtype

    @classmethod
    def for_model(cls, model: nn.Module, batch: int, max_len: int, *, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None, block_size: int = 16,
                  num_blocks: int | None = None) -> PagedCache:
        """A pool for an mlcore ``Transformer``, allocated up front, with ``batch`` row sequences.

        ``num_blocks`` defaults to what ``batch`` sequences of ``max_len`` columns need.
        """
        check_int("batch", batch, 1)
        check_int("max_len", max_len, 1)
        check_int("block_size", block_size, 1)
        if num_blocks is None:
            num_blocks = batch * math.ceil(max_len / block_size)
        c = model.config
        p = next(model.parameters())
        cache = cls(num_blocks, block_size)
        dev = torch.device(device) if device is not None else p.device
        for layer in range(c.n_layers):
            cache._allocate(layer, c.n_kv_heads, c.head_dim, dtype or p.dtype, dev)
        cache.rows = [cache.add_sequence() for _ in range(batch)]
        return cache

    # --- pools and blocks ----------------------------------------------------------------------------

    def _allocate(self, layer_idx: int, Hkv: int, D: int, dtype: torch.dtype, device: torch.device) -> None:
        shape = (self.num_blocks, Hkv, self.block_size, D)
        self.k_pool[layer_idx] = torch.zeros(shape, dtype=dtype, device=device)
        self.v_pool[layer_idx] = torch.zeros(shape, dtype=dtype, device=device)
        if self.index_pool is None:
            self.index_pool = torch.full((self.num_blocks, self.block_size), -1, dtype=torch.long, device=device)

    def _pool(self, layer_idx: int, k: Tensor) -> tuple[Tensor, Tensor]:
        _, Hkv, _, D = k.shape
        if layer_idx not in self.k_pool:
            self._allocate(layer_idx, Hkv, D, k.dtype, k.device)
        pk, pv = self.k_pool[layer_idx], self.v_pool[layer_idx]
        if (pk.shape[1], pk.shape[3]) != (Hkv, D) or pk.device != k.device:
            raise ValueError(f"layer {layer_idx}: this PagedCache's pool holds (Hkv, D) = ({pk.shape[1]}, "
                             f"{pk.shape[3]}) on {pk.device}, got k with ({Hkv}, {D}) on {k.device}")
        return pk, pv

    def _reserve(self, seqs: list[_Sequence], end: int, what: str) -> None:
        """Give every sequence enough blocks for ``end`` columns; check the whole need before taking any."""
        per_seq = math.ceil(end / self.block_size)
        need = sum(max(0, per_seq - len(s.blocks)) for s in seqs)
        if need > len(self.free_list):
            raise ValueError(
                f"PagedCache pool exhausted: {what} needs {need} more blocks of block_size={self.block_size} "
                f"tokens, but only {len(self.free_list)} of num_blocks={self.num_blocks} are free; free finished "
                "sequences with free(seq_id) / free_rows(), or build the cache with more num_blocks")
        if need == 0:
            return
        assert self.index_pool is not None
        new_blocks: list[int] = []
        for s in seqs:
            while len(s.blocks) < per_seq:
                b = self.free_list.pop()
                s.blocks.append(b)
                new_blocks.append(b)
        self.index_pool[new_blocks] = -1  # a reused block must not show its previous owner's columns
        self._version += 1
        self._epoch += 1

    def _table(self, seq_ids: tuple[int, ...], n_blocks: int, device: torch.device) -> Tensor:
        """(B, n_blocks) block ids of the sequences (padded with block 0 where a sequence has fewer)."""
        key = (seq_ids, n_blocks, self._version, device)
        if self._table_memo is not None and self._table_memo[0] == key:
            return self._table_memo[1]  # built once per step (and per new block), not once per layer
        rows = [(self.sequences[s].blocks + [0] * n_blocks)[:n_blocks] for s in seq_ids]
        table = torch.tensor(rows, dtype=torch.long, device=device)
        self._table_memo = (key, table)
        return table

    # --- the per-sequence API (a serving engine) -----------------------------------------------------

    def add_sequence(self) -> int:
        """Register an empty sequence; return its id. It takes blocks only as it grows."""
        sid = self._next_id
        self._next_id += 1
        self.sequences[sid] = _Sequence()
        return sid

    def _seq(self, seq_id: int) -> _Sequence:
        if seq_id not in self.sequences:
            raise ValueError(f"seq_id {seq_id!r} is not a live sequence of this PagedCache (live: "
                             f"{sorted(self.sequences)}); add_sequence() makes one, free() ends one")
        return self.sequences[seq_id]

    def free(self, seq_id: int) -> None:
        """End sequence ``seq_id``: its blocks go back to the free list (and are reused first)."""
        seq = self._seq(seq_id)
        self.free_list.extend(reversed(seq.blocks))
        del self.sequences[seq_id]
        if self.rows is not None and seq_id in self.rows:
            self.rows = None  # the batch rows no longer all exist
        self._version += 1

    def free_rows(self) -> None:
        """Free the sequences of ``generate``'s batch rows (the next update starts new ones)."""
        for sid in self.rows or []:
            if sid in self.sequences:
                self.free(sid)
        self.rows = None

    def seq_length(self, seq_id: int, layer_idx: int = 0) -> int:
        """Columns held for sequence ``seq_id`` in layer ``layer_idx``."""
        return self._seq(seq_id).length(layer_idx)

    def append(self, seq_id: int, layer_idx: int, k: Tensor, v: Tensor,
               index: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Add k, v (1, Hkv, T, D) to one sequence; return its keys, values (1, Hkv, Tk, D) and indices (1, Tk).

        ``index`` (1, T) defaults to the columns ``[length, length + T)``.
        """
        seq = self._seq(seq_id)
        if index is None:
            start = seq.length(layer_idx)
            index = torch.arange(start, start + k.shape[2], device=k.device)[None]
        return self._write((seq_id,), layer_idx, k, v, index)

    def gather(self, seq_ids: list[int], layer_idx: int) -> tuple[Tensor, Tensor, Tensor]:
        """Keys, values (B, Hkv, Tk, D) and indices (B, Tk) of sequences of different lengths, padded to the
        longest: a padding slot has index -1 and zero keys and values (nothing of another sequence leaks)."""
        ids = tuple(seq_ids)
        if not ids:
            raise ValueError("seq_ids must name at least one sequence")
        lengths = [self._seq(s).length(layer_idx) for s in ids]
        if layer_idx not in self.k_pool or max(lengths) == 0:
            raise ValueError(f"layer {layer_idx} holds nothing for sequences {list(ids)} yet")
        assert self.index_pool is not None
        longest = max(lengths)
        n_blocks = math.ceil(longest / self.block_size)
        table = self._table(ids, n_blocks, self.index_pool.device)
        k, v, index = self._read(ids, table, layer_idx, longest)
        col = torch.arange(longest, device=index.device)
        owned = col[None, :] < torch.tensor(lengths, device=index.device)[:, None]  # (B, Tk)
        index = torch.where(owned, index, -1)
        keep = owned[:, None, :, None]
        return torch.where(keep, k, 0), torch.where(keep, v, 0), index

    def crop_sequence(self, seq_id: int, n: int) -> None:
        """Keep the first ``n`` columns of one sequence (n < 0 drops the last -n); unneeded blocks are freed."""
        seq = self._seq(seq_id)
        n = crop_length(n, max(seq.lengths.values(), default=0))
        seq.lengths = {layer: min(length, n) for layer, length in seq.lengths.items()}
        seq.indexed = min(seq.indexed, n)
        keep = math.ceil(n / self.block_size)
        self.free_list.extend(reversed(seq.blocks[keep:]))
        del seq.blocks[keep:]
        if n % self.block_size and self.index_pool is not None:
            self.index_pool[seq.blocks[-1], n % self.block_size:] = -1
        self._version += 1
        self._epoch += 1

    def sequence(self, seq_id: int) -> PagedSequence:
        """A one-row view of sequence ``seq_id`` with the KVCache protocol: ``model(ids, cache=view)``."""
        self._seq(seq_id)
        return PagedSequence(self, seq_id)

    # --- the KVCache protocol over the batch rows ----------------------------------------------------

    def update(self, layer_idx: int, k: Tensor, v: Tensor, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Append k, v (B, Hkv, T, D) and index (B, T) to the row sequences; return (k, v, key_index) of all."""
        check_update(layer_idx, k, v, index)
        B = k.shape[0]
        created = self.rows is None
        if created:
            self.rows = [self.add_sequence() for _ in range(B)]
        if len(self.rows) != B:
            raise ValueError(f"this PagedCache has {len(self.rows)} batch rows, got k with batch {B} (use "
                             "free_rows() to start a new batch, or append() per sequence)")
        try:
            return self._write(tuple(self.rows), layer_idx, k, v, index)
        except ValueError:
            if created:  # a refused first update leaves no sequences behind (nothing was written)
                self.free_rows()
            raise

    def _write(self, ids: tuple[int, ...], layer_idx: int, k: Tensor, v: Tensor,
               index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Write T new columns to sequences of equal length; return their gathered keys, values, indices."""
        check_update(layer_idx, k, v, index)
        if k.shape[0] != len(ids):
            raise ValueError(f"k holds {k.shape[0]} rows for {len(ids)} sequences")
        seqs = [self._seq(s) for s in ids]
        start = seqs[0].length(layer_idx)
        if any(s.length(layer_idx) != start for s in seqs):
            raise ValueError(f"sequences {list(ids)} have different lengths in layer {layer_idx}; append() them "
                             "one by one")
        T = k.shape[2]
        end = start + T
        pk, pv = self._pool(layer_idx, k)
        self._reserve(seqs, end, f"appending {T} tokens to {len(ids)} sequence(s)")  # raises before any write
        assert self.index_pool is not None
        table = self._table(ids, math.ceil(end / self.block_size), k.device)  # (B, n_blocks)
        col = torch.arange(start, end, device=k.device)  # (T,)
        blk, slot = table[:, col // self.block_size], (col % self.block_size).expand(len(ids), T)  # (B, T)
        pk[blk, :, slot] = k.permute(0, 2, 1, 3).to(pk.dtype)  # (B, T, Hkv, D) into (block, :, slot)
        pv[blk, :, slot] = v.permute(0, 2, 1, 3).to(pv.dtype)
        for s in seqs:
            s.lengths[layer_idx] = end
        if any(s.indexed < end for s in seqs):  # the first layer of a step writes the shared indices
            self.index_pool[blk, slot] = index.to(self.index_pool.device, torch.long)
            for s in seqs:
                s.indexed = max(s.indexed, end)
            self._epoch += 1
        return self._read(ids, table, layer_idx, end)

    def _read(self, ids: tuple[int, ...], table: Tensor, layer_idx: int,
              length: int) -> tuple[Tensor, Tensor, Tensor]:
        """Gather the blocks of ``table`` (B, n) into (B, Hkv, length, D) keys / values and (B, length) indices."""
        B, n = table.shape
        pk, pv = self.k_pool[layer_idx], self.v_pool[layer_idx]
        Hkv, D = pk.shape[1], pk.shape[3]
        k = pk[table].transpose(1, 2).reshape(B, Hkv, n * self.block_size, D)[:, :, :length]
        v = pv[table].transpose(1, 2).reshape(B, Hkv, n * self.block_size, D)[:, :, :length]
        key = (ids, n, length, self._version, self._epoch)
        if self._index_memo is not None and self._index_memo[0] == key:
            return k, v, self._index_memo[1]  # every layer of a step gets this same tensor: one mask per step
        assert self.index_pool is not None
        index = self.index_pool[table].reshape(B, n * self.block_size)[:, :length]
        self._index_memo = (key, index)
        return k, v, index

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Columns held by the batch rows in ``layer_idx`` (0 before the first update)."""
        if not self.rows or self.rows[0] not in self.sequences:
            return 0
        return self.sequences[self.rows[0]].length(layer_idx)

    def crop(self, n: int) -> None:
        """Keep the first ``n`` columns of every row sequence (speculative rollback); freed blocks return."""
        if not self.rows:
            crop_length(n, 0)
            return
        longest = max(max(self._seq(s).lengths.values(), default=0) for s in self.rows)
        n = crop_length(n, longest)
        for sid in self.rows:
            self.crop_sequence(sid, min(n, max(self.sequences[sid].lengths.values(), default=0)))

    # --- the layout, for a reader or a notebook ------------------------------------------------------

    @property
    def block_table(self) -> dict[int, list[int]]:
        """Sequence id -> its block ids in order (a copy)."""
        return {sid: list(s.blocks) for sid, s in self.sequences.items()}

    @property
    def free_blocks(self) -> int:
        return len(self.free_list)

    def block_owner(self) -> list[int]:
        """For each block of the pool, the sequence that owns it (-1 = free): the picture of the pool."""
        owner = [-1] * self.num_blocks
        for sid, s in self.sequences.items():
            for b in s.blocks:
                owner[b] = sid
        return owner

    def nbytes(self) -> int:
        """Bytes held by the pools (used or free) and the index pool."""
        tensors = [*self.k_pool.values(), *self.v_pool.values()]
        if self.index_pool is not None:
            tensors.append(self.index_pool)
        return sum(t.numel() * t.element_size() for t in tensors)

    def describe(self) -> str:
        """A text drawing of the pool: each sequence's block table and which sequence owns each block."""
        pool = next(iter(self.k_pool.values()), None)
        shape = f"{tuple(pool.shape)} {str(pool.dtype).removeprefix('torch.')}" if pool is not None else "not allocated"
        lines = [f"PagedCache: {self.num_blocks} blocks x {self.block_size} tokens, {self.free_blocks} free; "
                 f"K and V pool per layer {shape}, {len(self.k_pool)} layers"]
        for sid, s in self.sequences.items():
            n = s.length()
            used = n - (len(s.blocks) - 1) * self.block_size if s.blocks else 0
            row = " (batch row)" if self.rows and sid in self.rows else ""
            lines.append(f"  seq {sid}{row}: {n} tokens in blocks {s.blocks}"
                         + (f", last block {used}/{self.block_size} full" if s.blocks else ""))
        cells = [f"{b}:{'s' + str(o) if o >= 0 else '--'}" for b, o in enumerate(self.block_owner())]
        lines.append("  pool: " + " ".join(f"[{c}]" for c in cells))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"PagedCache(num_blocks={self.num_blocks}, block_size={self.block_size}, "
                f"sequences={len(self.sequences)}, free_blocks={self.free_blocks})")


class PagedSequence:
    """One sequence of a :class:`PagedCache` seen as a batch-of-one KV cache (KVCache protocol)."""

    def __init__(self, cache: PagedCache, seq_id: int) -> None:
        self.cache, self.seq_id = cache, seq_id

    def update(self, layer_idx: int, k: Tensor, v: Tensor, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.cache.append(self.seq_id, layer_idx, k, v, index)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.cache.seq_length(self.seq_id, layer_idx)

    def crop(self, n: int) -> None:
        self.cache.crop_sequence(self.seq_id, n)

    def __repr__(self) -> str:
        return f"PagedSequence(seq_id={self.seq_id}, length={self.get_seq_length()})"
