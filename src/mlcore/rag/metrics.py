"""Retrieval quality with binary relevance: recall@k, mean reciprocal rank, nDCG@k (Järvelin & Kekäläinen 2002).

For one query with relevant set ``R`` and ranking ``d_1, d_2, ...``:

    recall@k = |R ∩ {d_1..d_k}| / |R|
    RR       = 1 / (rank of the first relevant document)     (0 if none is retrieved); MRR = mean over queries
    DCG@k    = sum_{i<=k, d_i in R} 1 / log2(i + 1);   nDCG@k = DCG@k / IDCG@k,  IDCG@k = sum_{i<=min(k,|R|)} 1/log2(i+1)

Each figure is averaged over queries.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence


def _check(rankings: Sequence[Sequence[int]], relevant: Sequence[Collection[int]], k: int | None) -> None:
    if len(rankings) != len(relevant) or not rankings:
        raise ValueError(f"rankings and relevant must be equally long and non-empty, got {len(rankings)} and "
                         f"{len(relevant)}")
    if any(len(r) == 0 for r in relevant):
        raise ValueError("every query needs at least one relevant document (an empty relevant set)")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"k must be a positive int, got {k!r}")
    for q, ranking in enumerate(rankings):
        if len(set(ranking)) != len(ranking):
            # a repeated relevant id would be counted twice (nDCG above 1, recall unchanged): map chunks
            # to their documents with `dedupe` first
            repeated = sorted({d for d in ranking if list(ranking).count(d) > 1})
            raise ValueError(f"rankings[{q}] lists a document more than once: {repeated[:10]}; apply dedupe() "
                             "to a ranking of chunks first")


def recall_at_k(rankings: Sequence[Sequence[int]], relevant: Sequence[Collection[int]], k: int) -> float:
    """Mean over queries of the fraction of relevant documents in the top ``k``."""
    _check(rankings, relevant, k)
    return sum(len(set(r[:k]) & set(rel)) / len(set(rel)) for r, rel in zip(rankings, relevant)) / len(rankings)


def mrr(rankings: Sequence[Sequence[int]], relevant: Sequence[Collection[int]], k: int | None = None) -> float:
    """Mean reciprocal rank of the first relevant document (within the top ``k`` when given)."""
    _check(rankings, relevant, k)
    total = 0.0
    for ranking, rel in zip(rankings, relevant):
        for i, doc in enumerate(ranking[:k] if k else ranking, start=1):
            if doc in rel:
                total += 1.0 / i
                break
    return total / len(rankings)


def ndcg_at_k(rankings: Sequence[Sequence[int]], relevant: Sequence[Collection[int]], k: int) -> float:
    """Mean normalised discounted cumulative gain at ``k`` with binary relevance."""
    _check(rankings, relevant, k)
    total = 0.0
    for ranking, rel in zip(rankings, relevant):
        dcg = sum(1.0 / math.log2(i + 1) for i, doc in enumerate(ranking[:k], start=1) if doc in rel)
        ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(k, len(set(rel))) + 1))
        total += dcg / ideal
    return total / len(rankings)


def dedupe(ranking: Sequence[int], group_of: Sequence[int]) -> list[int]:
    """Map a ranking of chunks to a ranking of their groups (e.g. sections), keeping each group's first place."""
    seen: dict[int, None] = {}
    for doc in ranking:
        seen.setdefault(group_of[doc], None)
    return list(seen)
