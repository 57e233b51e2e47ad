"""Encoding with learned ranks, exactly as tiktoken does it (``tiktoken/src/lib.rs``, ``byte_pair_merge``).

A pre-token's UTF-8 bytes start as single bytes. Then, repeatedly, look at every adjacent pair of parts
and merge the one whose *concatenated bytes* have the lowest rank (the leftmost on a tie); stop when no
adjacent concatenation is a token. A pre-token that is itself a token is returned whole at once.

Ranking by the bytes of the result rather than by the id pair is what tiktoken does; it also lets
``"a" + "bc"`` become ``"abc"`` even if training learned ``"abc"`` as ``"ab" + "c"``. Each pre-token's
result is cached: natural text repeats its words, so most chunks cost one dictionary lookup.

The plain loop rescans all pairs after each merge, ``O(n^2)`` for ``n`` bytes; a long chunk (a run of
10 000 spaces is a single pre-token) goes through an equivalent heap version instead: a linked list of parts
and a min-heap of ``(rank, start)`` entries, stale ones skipped by a version check, ``O(n log n)``.
"""

from __future__ import annotations

import heapq

from .patterns import SplitPattern

LONG_PIECE = 64  # bytes; longer pieces use the heap version


def bpe_merge(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """Token ids of one pre-token, lowest-rank merge first. ``O(len(piece)^2)``; pieces are short."""
    if not isinstance(piece, (bytes, bytearray)):  # a str would fail deep inside with KeyError: 'h'
        raise ValueError(f"piece must be the pre-token's UTF-8 bytes, got {type(piece).__name__} {piece!r:.60}")
    return _bpe_merge(bytes(piece), ranks)


def _bpe_merge(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """:func:`bpe_merge` without the argument check, for the encoder's loop (which always passes bytes)."""
    rank = ranks.get(piece)
    if rank is not None:
        return [rank]
    if len(piece) > LONG_PIECE:
        return bpe_merge_heap(piece, ranks)
    parts = [piece[i : i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best_rank, best_i = None, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (best_rank is None or r < best_rank):
                best_rank, best_i = r, i
        if best_i < 0:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return [ranks[p] for p in parts]


def bpe_merge_heap(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """The same result as :func:`bpe_merge` in ``O(n log n)``: lowest rank first, leftmost on ties."""
    n = len(piece)
    end = list(range(1, n + 1))  # the part starting at byte i covers piece[i:end[i]]
    nxt = list(range(1, n + 1))  # start of the next part (n: none)
    prv = list(range(-1, n - 1))  # start of the previous part (-1: none)
    version = [0] * n  # bumped whenever the part starting at i changes or disappears
    heap: list[tuple[int, int, int, int, int]] = []

    def push(i: int) -> None:
        j = nxt[i]
        if j < n:
            r = ranks.get(piece[i : end[j]])
            if r is not None:
                heapq.heappush(heap, (r, i, j, version[i], version[j]))

    for i in range(n - 1):
        push(i)
    while heap:
        _, i, j, vi, vj = heapq.heappop(heap)
        if version[i] != vi or version[j] != vj:
            continue  # stale: one of the two parts has changed since this entry was pushed
        end[i], nxt[i] = end[j], nxt[j]  # part j joins part i
        if nxt[j] < n:
            prv[nxt[j]] = i
        version[i] += 1
        version[j] += 1
        if prv[i] >= 0:
            push(prv[i])
        push(i)
    out, i = [], 0
    while i < n:
        out.append(ranks[piece[i : end[i]]])
        i = nxt[i]
    return out


class ChunkEncoder:
    """Pre-tokenize with ``pattern`` and BPE-encode each chunk, remembering chunks already seen.

    The cache holds at most ``cache_size`` chunks and is emptied when full (simple and bounded).
    """

    def __init__(self, compiled_pattern: SplitPattern, ranks: dict[bytes, int], cache_size: int = 1 << 17):
        self.pattern = compiled_pattern
        self.ranks = ranks
        self.cache: dict[str, list[int]] = {}
        self.cache_size = cache_size

    def encode(self, text: str) -> list[int]:
        """Ordinary text (special tokens are not looked for) -> ids."""
        out: list[int] = []
        cache, ranks = self.cache, self.ranks
        for chunk in self.pattern.findall(text):
            ids = cache.get(chunk)
            if ids is None:
                ids = _bpe_merge(chunk.encode("utf-8"), ranks)
                if len(cache) >= self.cache_size:
                    cache.clear()
                cache[chunk] = ids
            out.extend(ids)
        return out
