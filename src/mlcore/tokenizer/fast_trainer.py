"""BPE training with incremental pair counts: the same merges as ``naive_trainer``, much faster.

The naive loop recounts every pair after every merge, although a merge of ``(a, b)`` only changes the
words that contain ``(a, b)``. So we keep (as in HF tokenizers' and sentencepiece's trainers):

- ``counts[pair]`` — how often each pair occurs, weighted by word frequency;
- ``where[pair]`` — the ids of the words that contain it (may keep stale entries: checked on use);
- a max-heap of ``(-count, pair)`` with *lazy deletion*: when a count changes we push the new entry and
  leave the old one; a popped entry whose count is out of date is simply dropped.

After merging ``(a, b)`` into ``c`` we visit only ``where[(a, b)]``; for each such word we subtract the
counts of its old pairs and add those of its new pairs. The cost of a merge is proportional to the
words it touches, not to the corpus.

Tie-breaking equals the naive trainer's: highest count, then smallest ``(a, b)`` — the heap order of
``(-count, (a, b))``.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Mapping

from .base import Pair, corpus_too_small
from .naive_trainer import add_merge, check_word_counts, merge_word


def train_fast(word_counts: Mapping[bytes, int], num_tokens: int, *, vocab_size: int | None = None
               ) -> list[tuple[Pair, int]]:
    """Learn merges until there are ``num_tokens`` ordinary tokens; same contract as ``train_naive``."""
    check_word_counts(word_counts)
    words = [list(w) for w in word_counts]
    freqs = list(word_counts.values())
    counts: dict[Pair, int] = defaultdict(int)
    where: dict[Pair, set[int]] = defaultdict(set)
    for wi, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            counts[pair] += freq
            where[pair].add(wi)
    heap = [(-c, pair) for pair, c in counts.items()]
    heapq.heapify(heap)

    vocab = [bytes([i]) for i in range(256)]
    ids = {b: i for i, b in enumerate(vocab)}
    merges: list[tuple[Pair, int]] = []
    while len(vocab) < num_tokens:
        pair = _pop_best(heap, counts)
        if pair is None:
            raise corpus_too_small(len(vocab) - 256, num_tokens - 256, vocab_size or num_tokens)
        new_id = add_merge(vocab, ids, pair)
        merges.append((pair, new_id))

        delta: dict[Pair, int] = defaultdict(int)
        for wi in where.pop(pair):
            word, freq = words[wi], freqs[wi]
            new_word = merge_word(word, pair, new_id)
            if len(new_word) == len(word):  # stale entry: the pair left this word earlier
                continue
            for p in zip(word, word[1:]):
                delta[p] -= freq
            for p in zip(new_word, new_word[1:]):
                delta[p] += freq
                where[p].add(wi)
            words[wi] = new_word
        for p, d in delta.items():
            if d:
                counts[p] += d
                if counts[p]:
                    heapq.heappush(heap, (-counts[p], p))
                else:
                    del counts[p]
    return merges


def _pop_best(heap: list[tuple[int, Pair]], counts: dict[Pair, int]) -> Pair | None:
    """Pop entries until one is current (its count equals the live count); None when the heap is empty."""
    while heap:
        neg, pair = heapq.heappop(heap)
        if counts.get(pair, 0) == -neg > 0:
            return pair
    return None
