"""One retriever over one corpus, three ways: lexical (BM25), dense (exact or approximate index) and hybrid (RRF).

    r = Retriever.build(texts, embedder)               # BM25 + exact DenseIndex over the same texts
    r.search("What is the assert statement?", k=5, mode="hybrid")  -> [passage ids], best first
    r.rank_all(questions, mode="dense", depth=20)                  -> one ranking per question (batched)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from mlcore.rag.bm25 import BM25, simple_tokenize
from mlcore.rag.dense import DenseIndex
from mlcore.rag.fusion import ranking_from_scores, reciprocal_rank_fusion

MODES = ("bm25", "dense", "hybrid")


class Retriever:
    """``bm25`` and ``dense`` (``DenseIndex`` or ``ApproxIndex``) index the same ``texts`` in the same order."""

    def __init__(self, texts: Sequence[str], bm25: BM25, dense: Any, embedder: Any, *, rrf_k: float = 60.0) -> None:
        if not (len(texts) == bm25.n_docs == len(dense)):
            raise ValueError(f"texts ({len(texts)}), bm25 ({bm25.n_docs}) and dense ({len(dense)}) must index the "
                             "same corpus")
        if isinstance(rrf_k, bool) or not (isinstance(rrf_k, (int, float)) and math.isfinite(rrf_k) and rrf_k >= 0):
            raise ValueError(f"rrf_k must be a finite number >= 0, got {rrf_k!r}")
        self.texts, self.bm25, self.dense, self.embedder, self.rrf_k = list(texts), bm25, dense, embedder, rrf_k

    @classmethod
    def build(cls, texts: Sequence[str], embedder: Any, *, k1: float = 1.5, b: float = 0.75) -> Retriever:
        if isinstance(texts, str) or len(texts) == 0:
            raise ValueError("texts must be a non-empty list of str: an empty corpus has nothing to retrieve")
        return cls(texts, BM25.from_texts(texts, k1=k1, b=b), DenseIndex.build(texts, embedder), embedder)

    def rank_all(self, queries: Sequence[str], *, mode: str = "hybrid", depth: int = 20) -> list[list[int]]:
        """The top ``depth`` passage ids of each query under ``mode`` ("bm25", "dense" or "hybrid")."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if isinstance(queries, str) or not queries:
            raise ValueError("queries must be a non-empty list of str")
        above = 0.0 if mode == "hybrid" else None  # fused: a document with no query term adds no lexical rank
        lexical = [ranking_from_scores(self.bm25.scores(simple_tokenize(q)), depth, above=above) for q in queries] \
            if mode != "dense" else None
        dense = self.dense.search(self.embedder.encode(list(queries)), depth)[1].tolist() if mode != "bm25" else None
        if mode == "bm25":
            return lexical
        if mode == "dense":
            return dense
        return [[doc for doc, _ in reciprocal_rank_fusion([a, b], k=self.rrf_k)[:depth]]
                for a, b in zip(lexical, dense)]

    def search(self, query: str, k: int = 5, *, mode: str = "hybrid") -> list[int]:
        """The top ``k`` passage ids for one query."""
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"query must be a non-empty str, got {query!r}")
        return self.rank_all([query], mode=mode, depth=max(k, 50) if mode == "hybrid" else k)[0][:k]
