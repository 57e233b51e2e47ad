"""The textbook BPE training loop (Sennrich et al. 2016, Algorithm 1), kept as the readable reference.

    repeat until the vocabulary is full:
        count every adjacent pair of tokens in every word (weighted by how often the word occurs)
        pick the most frequent pair (a, b)
        give it a token c and replace every (a, b) by c in every word

Every merge recounts every pair of the whole corpus: O(merges x corpus) — fine for a lesson, slow for a
real vocabulary. ``fast_trainer`` learns exactly the same merges incrementally.

Tie-breaking (shared with ``fast_trainer``): the highest count wins; among equal counts, the
lexicographically smallest pair of token ids ``(a, b)``. It costs nothing in either trainer:
``min(key=(-count, pair))`` here, a heap of ``(-count, pair)`` there.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from .base import Pair, corpus_too_small


def merge_word(word: list[int], pair: Pair, new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of ``pair`` in ``word``, left to right, by ``new_id``.

    ``[a, a, a]`` with ``(a, a)`` gives ``[c, a]``, as in every BPE implementation.
    """
    a, b = pair
    out: list[int] = []
    i, n = 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def add_merge(vocab: list[bytes], ids: dict[bytes, int], pair: Pair) -> int:
    """Give the bytes of ``pair`` joined a token id: a new one, or the existing id of the same bytes."""
    joined = vocab[pair[0]] + vocab[pair[1]]
    if joined not in ids:
        ids[joined] = len(vocab)
        vocab.append(joined)
    return ids[joined]


def count_pairs(words: list[list[int]], freqs: list[int]) -> Counter[Pair]:
    """How often each adjacent pair occurs in the corpus (overlaps counted: ``aaa`` holds ``(a, a)`` twice)."""
    counts: Counter[Pair] = Counter()
    for word, freq in zip(words, freqs):
        for pair in zip(word, word[1:]):
            counts[pair] += freq
    return counts


def check_word_counts(word_counts: Mapping[bytes, int]) -> None:
    """Both trainers' argument check: ``{pre-token bytes: count}`` (a str key would fail deep inside, on ``vocab[c]``)."""
    if not isinstance(word_counts, Mapping):
        raise ValueError(f"word_counts must be a dict {{bytes: count}}, got {type(word_counts).__name__}")
    for word in word_counts:
        if not isinstance(word, bytes):
            raise ValueError(
                f"word_counts keys must be pre-tokens as UTF-8 bytes (see count_pretokens), got "
                f"{type(word).__name__} {word!r:.40}"
            )


def train_naive(word_counts: Mapping[bytes, int], num_tokens: int, *, vocab_size: int | None = None
                ) -> list[tuple[Pair, int]]:
    """Learn merges until there are ``num_tokens`` ordinary tokens (256 bytes + learned ones).

    ``word_counts`` maps each distinct pre-token's UTF-8 bytes to its frequency. Returns the merges
    ``((a, b), id)`` in learning order. ``vocab_size`` is only quoted in the error message.
    """
    check_word_counts(word_counts)
    words = [list(w) for w in word_counts]
    freqs = list(word_counts.values())
    vocab = [bytes([i]) for i in range(256)]
    ids = {b: i for i, b in enumerate(vocab)}
    merges: list[tuple[Pair, int]] = []
    while len(vocab) < num_tokens:
        counts = count_pairs(words, freqs)
        if not counts:
            raise corpus_too_small(len(vocab) - 256, num_tokens - 256, vocab_size or num_tokens)
        pair = min(counts, key=lambda p: (-counts[p], p))  # most frequent; ties -> smallest pair
        new_id = add_merge(vocab, ids, pair)
        merges.append((pair, new_id))
        words = [merge_word(w, pair, new_id) for w in words]
    return merges
