"""Reciprocal rank fusion and the retrieval metrics, by hand; hybrid search on real reference sections."""

import math

import pytest
import torch

from mlcore.rag import (
    BM25,
    dedupe,
    hybrid_search,
    mrr,
    ndcg_at_k,
    ranking_from_scores,
    recall_at_k,
    reciprocal_rank_fusion,
)


def test_rrf_by_hand():
    fused = dict(reciprocal_rank_fusion([[1, 2, 3], [3, 1]], k=60))
    assert fused[1] == pytest.approx(1 / 61 + 1 / 62)
    assert fused[3] == pytest.approx(1 / 63 + 1 / 61)
    assert fused[2] == pytest.approx(1 / 62)
    assert [d for d, _ in reciprocal_rank_fusion([[1, 2, 3], [3, 1]])] == [1, 3, 2]
    with pytest.raises(ValueError, match="twice"):
        reciprocal_rank_fusion([[1, 1]])
    with pytest.raises(ValueError, match="empty"):
        reciprocal_rank_fusion([])


def test_nan_scores_refused():
    with pytest.raises(ValueError, match="NaN"):
        ranking_from_scores(torch.tensor([0.1, float("nan")]), 2)


def test_metrics_by_hand():
    rankings, relevant = [[5, 1, 2], [3, 4, 9]], [{1}, {9, 4}]
    assert recall_at_k(rankings, relevant, 1) == 0.0
    assert recall_at_k(rankings, relevant, 2) == pytest.approx((1 + 0.5) / 2)
    assert mrr(rankings, relevant) == pytest.approx((1 / 2 + 1 / 2) / 2)
    ndcg_q2 = (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(rankings, relevant, 3) == pytest.approx((1 / math.log2(3) + ndcg_q2) / 2)
    assert dedupe([4, 3, 2, 1], [0, 0, 1, 1, 2]) == [2, 1, 0]
    with pytest.raises(ValueError, match="relevant"):
        recall_at_k([[1]], [set()], 1)
    with pytest.raises(ValueError, match="equally long"):
        mrr([[1]], [{1}, {2}])


def test_hybrid_search_finds_sections(embedder, small_corpus, small_retriever):
    sections, passages = small_corpus
    retriever, _ = small_retriever
    texts, bm, dense = retriever.texts, retriever.bm25, retriever.dense
    top = hybrid_search("How do I suspend and resume a coroutine function?", bm25=bm, dense=dense,
                        embedder=embedder, k=3)
    heading = {s.id: s.heading for s in sections}
    assert "Coroutine" in heading[passages[top[0][0]].section]
    with pytest.raises(ValueError, match="same corpus"):
        hybrid_search("x y", bm25=BM25.from_texts(texts[:3]), dense=dense, embedder=embedder)
