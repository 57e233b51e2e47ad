"""BM25 from scratch against its twin, bm25s (method="lucene": the same idf and term-frequency formula)."""

import math

import bm25s
import numpy as np
import pytest
import torch

from mlcore.rag import BM25, simple_tokenize


@pytest.fixture(scope="module")
def corpus():
    from pydoc_data.topics import topics

    return [simple_tokenize(topics[name]) for name in sorted(topics)[:40]]


@pytest.mark.parametrize("k1,b", [(1.5, 0.75), (0.9, 0.4), (2.0, 1.0)])
def test_scores_equal_bm25s(corpus, k1, b):
    ours = BM25(corpus, k1=k1, b=b)
    twin = bm25s.BM25(k1=k1, b=b, method="lucene")
    twin.index(corpus, show_progress=False)
    for query in ["assert statement debugging", "coroutine await async iterator", "class attribute descriptor __get__",
                  "zzz-not-a-word lambda"]:
        q = simple_tokenize(query)
        ref = torch.from_numpy(np.asarray(twin.get_scores(q), dtype=np.float64))
        got = ours.scores(q)
        assert got.abs().max() > 0
        assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5), (got - ref).abs().max()


def test_formula_by_hand():
    docs = [["a", "b", "a"], ["b", "c"], ["c", "c", "c", "d"]]
    bm = BM25(docs, k1=1.2, b=0.5)
    avgdl, n = 3.0, 3
    idf_a = math.log(1 + (n - 1 + 0.5) / (1 + 0.5))
    expect = idf_a * 2 / (2 + 1.2 * (1 - 0.5 + 0.5 * 3 / avgdl))
    assert bm.scores(["a"])[0].item() == pytest.approx(expect, rel=1e-12)
    assert bm.scores(["a"])[1:].abs().sum() == 0
    assert bm.search("c", k=2)[1].tolist() == [2, 1]                   # more c's, longer doc: still first


def test_bad_input():
    with pytest.raises(ValueError, match="empty corpus"):
        BM25([])
    with pytest.raises(ValueError, match="tokenize first"):
        BM25(["raw text"])
    with pytest.raises(ValueError, match="only empty"):
        BM25([[], []])
    with pytest.raises(ValueError, match="b must be"):
        BM25([["a"]], b=1.5)
    with pytest.raises(ValueError, match="query_tokens"):
        BM25([["a"]]).scores("a")
