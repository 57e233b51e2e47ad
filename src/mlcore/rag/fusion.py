"""Hybrid retrieval by reciprocal rank fusion (Cormack, Clarke & Büttcher 2009).

Lexical (BM25) and dense scores live on incomparable scales, so RRF fuses *ranks*, not scores: a document at
rank ``r_i(d)`` (1 = best) in ranking ``i`` gets

    RRF(d) = sum_i 1 / (k + r_i(d))          k = 60 (the paper's constant), absent from a ranking: adds 0

A document ranked well by either retriever rises; one ranked well by both rises most.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def ranking_from_scores(scores: Tensor, depth: int, *, above: float | None = None) -> list[int]:
    """Indices of the ``depth`` highest ``scores (N,)``, best first (ties by index); NaN scores are refused.
    ``above``: only documents scoring more than this are ranked (BM25: 0 = no query term in the document)."""
    if not isinstance(scores, Tensor) or scores.dim() != 1:
        raise ValueError(f"scores must be a 1-D tensor (N,), got {getattr(scores, 'shape', type(scores))}")
    _positive_int("depth", depth)
    if above is not None and (isinstance(above, bool) or not isinstance(above, (int, float))):
        raise ValueError(f"above must be a number or None, got {above!r}")
    if bool(torch.isnan(scores).any()):
        raise ValueError(f"scores holds {int(torch.isnan(scores).sum())} NaN values; a ranking needs "
                         "comparable numbers")
    order = torch.sort(scores, descending=True, stable=True).indices[:depth]
    if above is not None:
        order = order[scores[order] > above]
    return order.tolist()


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], *, k: float = 60.0) -> list[tuple[int, float]]:
    """Fuse rankings (lists of document ids, best first) -> ``[(id, RRF score)]`` sorted best first."""
    from mlcore.rag.metrics import _ids

    if isinstance(rankings, (Tensor, np.ndarray)) and rankings.ndim != 2:
        raise ValueError(f"rankings must be (R, depth) or a list of R rankings, got shape {tuple(rankings.shape)}")
    if len(rankings) == 0:
        raise ValueError("rankings is empty: give at least one ranking to fuse")
    if isinstance(k, bool) or not (isinstance(k, (int, float)) and math.isfinite(k) and k >= 0):
        raise ValueError(f"k must be a finite number >= 0, got {k!r}")
    fused: dict[int, float] = {}
    # a tensor / array row (DenseIndex.search, faiss) or NumPy / 0-d tensor ids are read as Python ints, as the
    # metrics read them
    for ranking in (_ids(f"rankings[{i}]", r) for i, r in enumerate(rankings)):
        if any(isinstance(doc, bool) or not isinstance(doc, int) for doc in ranking):
            raise ValueError(f"a ranking must list int document ids, got {list(ranking)[:20]}")
        if len(set(ranking)) != len(ranking):
            raise ValueError(f"a ranking lists a document twice: {list(ranking)[:20]}")
        for rank, doc in enumerate(ranking, start=1):
            fused[int(doc)] = fused.get(int(doc), 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


def hybrid_search(query: str, *, bm25: Any, dense: Any, embedder: Any, k: int = 10, depth: int = 50,
                  rrf_k: float = 60.0) -> list[tuple[int, float]]:
    """Top ``k`` of the RRF fusion of ``bm25`` (a :class:`BM25`) and ``dense`` (a ``DenseIndex`` or
    ``ApproxIndex``) rankings of ``query``, each cut at ``depth``: ``[(document id, RRF score)]``."""
    from mlcore.rag.bm25 import simple_tokenize

    if not isinstance(query, str) or not query.strip():
        raise ValueError(f"query must be a non-empty str, got {query!r}")
    _positive_int("k", k)
    _positive_int("depth", depth)
    if not (isinstance(rrf_k, (int, float)) and not isinstance(rrf_k, bool) and math.isfinite(rrf_k) and rrf_k >= 0):
        raise ValueError(f"rrf_k must be a finite number >= 0, got {rrf_k!r}")
    if bm25.n_docs != len(dense):
        raise ValueError(f"bm25 indexes {bm25.n_docs} documents but dense indexes {len(dense)}: they must index "
                         "the same corpus in the same order")
    # a document with no query term (BM25 score 0) is absent from the lexical ranking, not ranked last
    lexical = ranking_from_scores(bm25.scores(simple_tokenize(query)), depth, above=0.0)
    _, ids = dense.search(embedder.encode([query]), depth)
    return reciprocal_rank_fusion([lexical, ids[0].tolist()], k=rrf_k)[:k]
