"""Reciprocal rank fusion and the retrieval metrics, by hand; hybrid search on real reference sections."""

import math

import numpy as np
import pytest
import torch

from mlcore.rag import (
    BM25,
    DenseIndex,
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


class _OneVector:
    """An embedder stand-in whose query vector is fixed: the dense ranking is known by construction."""

    def __init__(self, vector: list[float]) -> None:
        self.vector = torch.tensor([vector])

    def encode(self, texts):
        return self.vector


def test_documents_without_a_query_term_get_no_lexical_rank():
    """RRF: a document absent from a ranking adds 0. BM25 scores 0 for a document that holds no query term, so
    it is absent, not ranked last (it had tied the dense winner before)."""
    bm25 = BM25.from_texts(["alpha beta", "gamma delta", "epsilon zeta", "eta theta"])
    dense = DenseIndex(torch.eye(4))
    emb = _OneVector([0.0, 0.0, 0.0, 1.0])  # dense order: 3, then 0, 1, 2 (ties by id)
    nothing = hybrid_search("no such words", bm25=bm25, dense=dense, embedder=emb, k=4)
    assert nothing == [(d, pytest.approx(1 / (60 + r))) for r, d in enumerate([3, 0, 1, 2], start=1)]
    zeta = hybrid_search("zeta", bm25=bm25, dense=dense, embedder=emb, k=4)
    assert zeta[0] == (2, pytest.approx(1 / 61 + 1 / 64))  # the only lexical match, first by both rankings
    assert [d for d, _ in zeta[1:]] == [3, 0, 1]
    for bad in (dict(depth=0), dict(depth=2.5), dict(rrf_k=-1.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            hybrid_search("zeta", bm25=bm25, dense=dense, embedder=emb, **bad)


def test_equal_scores_rank_by_id():
    """Duplicate passages score the same: the exact index and BM25 return them lowest id first."""
    index = DenseIndex(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
    assert index.search(torch.tensor([[1.0, 0.0]]), 3)[1].tolist() == [[0, 1, 3]]
    bm25 = BM25.from_texts(["a b", "c", "a b", "a b"])
    assert bm25.search("a", 3)[1].tolist() == [0, 2, 3]
    with pytest.raises(ValueError, match="query"):
        bm25.search(None)
    with pytest.raises(ValueError, match="texts"):
        BM25.from_texts(["a", None])


def test_embedder_reads_a_generator_once(embedder):
    texts = ["alpha beta", "a second text"]
    torch.testing.assert_close(embedder.encode(t for t in texts), embedder.encode(texts))


@pytest.mark.parametrize("metric", [recall_at_k, mrr, ndcg_at_k])
def test_metrics_refuse_a_ranking_that_repeats_a_document(metric):
    # counted twice, a repeated relevant id gave nDCG 2.13 for [[1, 1, 1]]
    with pytest.raises(ValueError, match=r"rankings\[0\] lists a document more than once: \[1\]"):
        metric([[1, 1, 1]], [{1}], 3)


def test_metrics_accept_index_tensors_and_match_sklearn():
    """DenseIndex.search's (Q, k) indices, or its rows, scored 0.0 silently: 0-d tensors hash by identity, so no
    id ever matched a relevant int (a whole tensor raised an unclear RuntimeError)."""
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    np = pytest.importorskip("numpy")
    ids = torch.tensor([[3, 1, 2, 0], [0, 4, 5, 2]])
    relevant = [{1, 0}, {2}]
    as_list = ids.tolist()
    expected = (recall_at_k(as_list, relevant, 2), mrr(as_list, relevant), ndcg_at_k(as_list, relevant, 3))
    assert expected[:2] == ((1 / 2 + 0) / 2, (1 / 2 + 1 / 4) / 2)
    y_true = np.zeros((2, 6))
    y_score = np.zeros((2, 6))
    for q, row in enumerate(as_list):
        y_true[q, list(relevant[q])] = 1
        y_score[q] = -10.0 - np.arange(6)  # unranked documents after the ranked ones
        y_score[q, row] = -np.arange(len(row), dtype=float)
    assert expected[2] == pytest.approx(sklearn_metrics.ndcg_score(y_true, y_score, k=3), rel=1e-12)
    for rankings in (ids, list(ids), ids.numpy(), list(ids.numpy())):
        got = (recall_at_k(rankings, relevant, 2), mrr(rankings, relevant), ndcg_at_k(rankings, relevant, 3))
        assert got == pytest.approx(expected, rel=1e-12)
    assert recall_at_k(as_list, [torch.tensor([1, 0]), torch.tensor([2])], 2) == expected[0]
    with pytest.raises(ValueError, match=r"relevant\[0\] must be a collection"):
        recall_at_k(as_list, [1, 2], 2)
    with pytest.raises(ValueError, match=r"rankings\[0\] lists a document more than once"):
        mrr([torch.tensor([1, 1])], [{1}])


def test_dedupe_refuses_ids_outside_group_of():
    """faiss' -1 ("not found") silently became the last chunk's group; an id past the end raised IndexError."""
    assert dedupe(torch.tensor([4, 3, 2]), [0, 0, 1, 1, 2]) == [2, 1]
    assert dedupe([7, 5], {5: "a", 7: "b"}) == ["b", "a"]
    for bad in ([-1], [5]):
        with pytest.raises(ValueError, match="group_of"):
            dedupe(bad, [0, 0, 1, 1, 2])


def test_rrf_reads_tensor_and_numpy_rankings_as_ids():
    # a DenseIndex.search row or a faiss array was refused ("a ranking must list int document ids");
    # the metrics read them as ids since the third audit, and so does the fusion now
    lexical, dense = [3, 1, 2], torch.tensor([[2, 3, 0]])
    want = reciprocal_rank_fusion([lexical, [2, 3, 0]])
    assert reciprocal_rank_fusion([lexical, dense[0]]) == want
    assert reciprocal_rank_fusion([np.array(lexical), list(dense[0])]) == want
    assert reciprocal_rank_fusion(torch.tensor([lexical, [2, 3, 0]])) == want
    with pytest.raises(ValueError, match="k must be a finite number"):
        reciprocal_rank_fusion([lexical], k=True)
    with pytest.raises(ValueError, match="rankings\\[0\\] must be a collection"):
        reciprocal_rank_fusion([1, 2])  # was TypeError: 'int' object is not iterable
    with pytest.raises(ValueError, match="above must be a number or None"):
        ranking_from_scores(torch.tensor([1.0, 3.0]), 2, above="0")  # was TypeError: Tensor > str
