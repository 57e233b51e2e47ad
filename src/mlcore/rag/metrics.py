"""Retrieval quality with binary relevance: recall@k, mean reciprocal rank, nDCG@k (Järvelin & Kekäläinen 2002).

For one query with relevant set ``R`` and ranking ``d_1, d_2, ...``:

    recall@k = |R ∩ {d_1..d_k}| / |R|
    RR       = 1 / (rank of the first relevant document)     (0 if none is retrieved); MRR = mean over queries
    DCG@k    = sum_{i<=k, d_i in R} 1 / log2(i + 1);   nDCG@k = DCG@k / IDCG@k,  IDCG@k = sum_{i<=min(k,|R|)} 1/log2(i+1)

Each figure is averaged over queries. ``rankings`` may be a ``(Q, k)`` tensor or array (``DenseIndex.search``'s
indices), or a list of rows of any of these; ids are compared as Python ints (a 0-d tensor hashes by identity
and would silently never match a relevant id).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch


def _ids(name: str, ids: Any) -> list[Any]:
    """A ranking or relevant set as a list of plain Python ids (tensor / array rows and 0-d items unwrapped)."""
    if isinstance(ids, (torch.Tensor, np.ndarray)):
        if ids.ndim != 1:
            raise ValueError(f"{name} must be 1-D (one query's ids), got shape {tuple(ids.shape)}")
        return ids.tolist()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Collection):
        raise ValueError(f"{name} must be a collection of document ids, got {type(ids).__name__}: {ids!r:.80}")
    return [d.item() if isinstance(d, (torch.Tensor, np.generic)) else d for d in ids]


def _check(rankings: Any, relevant: Any, k: int | None) -> tuple[list[list[Any]], list[set[Any]]]:
    """Validate and normalise the inputs: (rankings as lists of ids, relevant sets)."""
    if isinstance(rankings, (torch.Tensor, np.ndarray)) and rankings.ndim != 2:
        raise ValueError(f"rankings must be (Q, k) or a list of Q rankings, got shape {tuple(rankings.shape)}")
    if isinstance(relevant, (torch.Tensor, np.ndarray)) and relevant.ndim != 2:
        raise ValueError(f"relevant must be (Q, r) or a list of Q collections, got shape {tuple(relevant.shape)}")
    rankings = [_ids(f"rankings[{q}]", r) for q, r in enumerate(rankings)]
    relevant = [set(_ids(f"relevant[{q}]", r)) for q, r in enumerate(relevant)]
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
    return rankings, relevant


def recall_at_k(rankings: Sequence[Sequence[int]], relevant: Sequence[Collection[int]], k: int) -> float:
    """Mean over queries of the fraction of relevant documents in the top ``k``."""
    rankings, relevant = _check(rankings, relevant, k)
    return sum(len(set(r[:k]) & set(rel)) / len(set(rel)) for r, rel in zip(rankings, relevant)) / len(rankings)


def mrr(rankings: Sequence[Sequence[int]], relevant: Sequence[Collection[int]], k: int | None = None) -> float:
    """Mean reciprocal rank of the first relevant document (within the top ``k`` when given)."""
    rankings, relevant = _check(rankings, relevant, k)
    total = 0.0
    for ranking, rel in zip(rankings, relevant):
        for i, doc in enumerate(ranking[:k] if k else ranking, start=1):
            if doc in rel:
                total += 1.0 / i
                break
    return total / len(rankings)


def ndcg_at_k(rankings: Sequence[Sequence[int]], relevant: Sequence[Collection[int]], k: int) -> float:
    """Mean normalised discounted cumulative gain at ``k`` with binary relevance."""
    rankings, relevant = _check(rankings, relevant, k)
    total = 0.0
    for ranking, rel in zip(rankings, relevant):
        dcg = sum(1.0 / math.log2(i + 1) for i, doc in enumerate(ranking[:k], start=1) if doc in rel)
        ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(k, len(set(rel))) + 1))
        total += dcg / ideal
    return total / len(rankings)


def dedupe(ranking: Sequence[int], group_of: Sequence[int] | Mapping[int, int]) -> list[int]:
    """Map a ranking of chunks to a ranking of their groups (e.g. sections), keeping each group's first place.

    ``ranking``: chunk ids (a list, or a 1-D tensor / array row); ``group_of[chunk]``: the chunk's group."""
    seen: dict[int, None] = {}
    for doc in _ids("ranking", ranking):
        # a negative id (faiss' -1 "not found") would silently pick the last group
        known = (doc in group_of if isinstance(group_of, Mapping) else
                 isinstance(doc, int) and not isinstance(doc, bool) and 0 <= doc < len(group_of))
        if not known:
            raise ValueError(f"ranking holds {doc!r}, not a chunk index into group_of (length {len(group_of)})")
        seen.setdefault(group_of[doc], None)
    return list(seen)
