"""Reference-counted KV blocks with automatic prefix caching (vLLM's block manager, Kwon et al. 2023).

The engine's sequences own **block tables** (lists of block ids of a :class:`~mlcore.inference.PagedCache`).
Blocks come off the cache's ``free_list`` and go back on it, so ``cache.free_blocks`` always shows what is
truly unused. On top of plain allocation:

- **reference counts**: a block may sit in several tables (a shared prefix); it is returned only when the last
  table lets go;
- **prefix caching** (vLLM's automatic prefix caching): a *full* block is keyed by

      h_i = hash(h_{i-1}, tokens of block i)          h_{-1} = a fixed seed

  so equal keys mean equal tokens *and* equal everything before them, hence equal keys and values. A new
  request looks its prompt's full blocks up in order and reuses every hit read-only (its refcount goes up);
  only the rest is computed. A cached block whose refcount drops to 0 is not freed: it waits in an LRU list
  (``evictable``), still findable, and is evicted (its key forgotten) only when a fresh block is needed and the
  free list is empty.

``available`` = free + evictable is what a new allocation can get; with no request running it returns to
``num_blocks`` (the no-leak check).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

from mlcore.inference.paged_cache import PagedCache

_ROOT = b"mlcore-prefix-v1"


def block_hashes(tokens: Sequence[int], block_size: int, *, salt: str = "") -> list[bytes]:
    """Chained hashes h_0, h_1, ... of the full blocks of ``tokens`` (a partial last block has none).

    ``salt`` separates namespaces (e.g. models or adapters) that must never share blocks.
    """
    out: list[bytes] = []
    prev = hashlib.sha256(_ROOT + salt.encode()).digest()
    for i in range(len(tokens) // block_size):
        chunk = tokens[i * block_size:(i + 1) * block_size]
        prev = hashlib.sha256(prev + b"".join(int(t).to_bytes(4, "little") for t in chunk)).digest()
        out.append(prev)
    return out


class BlockManager:
    """Allocate, share and free blocks of ``cache``; optional prefix cache (see the module docstring)."""

    def __init__(self, cache: PagedCache, *, prefix_caching: bool = True) -> None:
        self.cache = cache
        self.block_size = cache.block_size
        self.num_blocks = cache.num_blocks
        self.prefix_caching = prefix_caching
        self.refcount = [0] * cache.num_blocks
        self.hash_of: dict[int, bytes] = {}  # block -> its key (registered full blocks only)
        self.block_of: dict[bytes, int] = {}  # key -> block
        self.evictable: OrderedDict[int, None] = OrderedDict()  # refcount 0 but cached, least recent first
        self.hits = 0  # prefix blocks reused
        self.queries = 0  # prefix blocks looked up

    # --- counts ---------------------------------------------------------------------------------------

    @property
    def free(self) -> int:
        return len(self.cache.free_list)

    @property
    def available(self) -> int:
        """Blocks an allocation can get now: free plus cached-but-unused (evictable)."""
        return self.free + len(self.evictable)

    @property
    def used(self) -> int:
        return self.num_blocks - self.available

    # --- allocation -----------------------------------------------------------------------------------

    def allocate(self, n: int) -> list[int]:
        """``n`` fresh blocks (refcount 1), evicting least-recently-used cached blocks if the free list runs out.

        Raises ValueError (taking nothing) when fewer than ``n`` are available.
        """
        if n > self.available:
            raise ValueError(f"BlockManager: need {n} blocks, only {self.available} of {self.num_blocks} available")
        out = []
        for _ in range(n):
            if self.cache.free_list:
                b = self.cache.free_list.pop()
            else:
                b, _ = self.evictable.popitem(last=False)  # evict the least recently used cached block
                del self.block_of[self.hash_of.pop(b)]
            self.refcount[b] = 1
            out.append(b)
        return out

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one reference to each block; unreferenced blocks become evictable (cached) or free."""
        for b in reversed(blocks):  # the tail first, so a prefix's head stays cached longest
            if self.refcount[b] <= 0:
                raise ValueError(f"block {b} released more often than it was taken")
            self.refcount[b] -= 1
            if self.refcount[b] == 0:
                if b in self.hash_of:
                    # the most recently used go last in the LRU order (evicted last); within one release the
                    # tail goes in first, so it is evicted before its head (vLLM's free-block queue). Evicting a
                    # head first would strand its whole chain: lookups stop at the first missing hash.
                    self.evictable[b] = None
                else:
                    self.cache.free_list.append(b)

    # --- prefix caching -------------------------------------------------------------------------------

    def match_prefix(self, hashes: Sequence[bytes], *, record: bool = True) -> list[int]:
        """Take (refcount + 1) the cached blocks of the longest cached prefix of ``hashes``; return them.

        ``record=False`` leaves ``hits`` / ``queries`` alone: a scheduler that may give the blocks back (the
        request is not admitted this step) counts the lookup with :meth:`record_lookup` once it is admitted.
        """
        if not self.prefix_caching:
            return []
        out = []
        for h in hashes:
            b = self.block_of.get(h)
            if b is None:
                break
            self.refcount[b] += 1
            self.evictable.pop(b, None)
            out.append(b)
        if record:
            self.record_lookup(len(hashes), len(out))
        return out

    def record_lookup(self, looked_up: int, matched: int) -> None:
        """Count one prefix lookup of ``looked_up`` hashes whose first ``matched`` were cached (a lookup stops at
        its first miss, so it queried ``matched + 1`` blocks, or all of them)."""
        if self.prefix_caching:
            self.queries += min(looked_up, matched + 1)
            self.hits += matched

    def register(self, block: int, h: bytes) -> None:
        """Record that full ``block`` holds the tokens keyed ``h`` (first writer wins; a duplicate stays private)."""
        if not self.prefix_caching or block in self.hash_of or h in self.block_of:
            return
        self.hash_of[block] = h
        self.block_of[h] = block

    def shared_blocks(self) -> int:
        """Blocks held by more than one table right now."""
        return sum(1 for r in self.refcount if r > 1)

    def __repr__(self) -> str:
        return (f"BlockManager(num_blocks={self.num_blocks}, free={self.free}, evictable={len(self.evictable)}, "
                f"cached={len(self.block_of)}, shared={self.shared_blocks()})")
