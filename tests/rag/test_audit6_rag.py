"""Audit 6 (rag): BM25 tokenization of scripts whose letters carry combining marks, and BM25 vs rank_bm25."""

import math
import unicodedata

import pytest

from mlcore.rag import BM25, simple_tokenize


@pytest.mark.parametrize("text,expected", [
    ("हिन्दी भाषा", ["हिन्दी", "भाषा"]),             # Devanagari vowel signs / virama are marks (Mn, Mc)
    ("مُحَمَّد", ["مُحَمَّد"]),                       # vocalised Arabic: harakat are marks
    ("nai\u0308ve", ["naïve"]),                     # decomposed Latin: one word, composed (NFC)
])
def test_words_with_combining_marks_stay_whole(text, expected):
    assert simple_tokenize(text) == [unicodedata.normalize("NFC", w) for w in expected]


def test_precomposed_and_decomposed_forms_match():
    bm = BM25.from_texts(["un cafe\u0301 noir", "the tea"])
    scores, ids = bm.search("café", k=1)
    assert ids.tolist() == [0] and scores[0] > 0


def test_ascii_tokenization_unchanged():
    assert simple_tokenize("Hello, World_x 42 don't") == ["hello", "world_x", "42", "don", "t"]
    with pytest.raises(ValueError, match="text must be a str"):
        simple_tokenize(None)


def test_scores_equal_rank_bm25_with_lucene_idf():
    rank_bm25 = pytest.importorskip("rank_bm25")

    class Lucene(rank_bm25.BM25Okapi):   # rank_bm25's scoring with the idf BM25 documents (never negative)
        def _calc_idf(self, nd):
            for word, df in nd.items():
                self.idf[word] = math.log(1 + (self.corpus_size - df + 0.5) / (df + 0.5))

    docs = [["a", "b", "a"], ["b", "c"], ["c", "c", "c", "d"], ["a", "b", "a"], ["e"]]
    for k1, b in [(1.5, 0.75), (0.5, 0.3), (2.0, 1.0), (1.2, 0.0)]:
        ref = Lucene(docs, k1=k1, b=b).get_scores(["a", "c", "a", "zz"]) / (k1 + 1)   # classic (k1 + 1) factor
        got = BM25(docs, k1=k1, b=b).scores(["a", "c", "a", "zz"])
        assert got.tolist() == pytest.approx(ref.tolist(), abs=1e-12)


def test_embedder_edge_texts_equal_sentence_transformers(embedder):
    """Empty / whitespace-only / zero-width / emoji / CJK / combining-mark texts, mixed with a long one in one
    batch: each row equals sentence-transformers' and the same text encoded alone."""
    import warnings

    import torch

    st = pytest.importorskip("sentence_transformers")
    from mlcore.rag.embedder import default_model_dir

    texts = ["", " ", "\n\t ", "\u200b", "😀🎉", "東京タワーは高い", "e\u0301\u0301\u0301", "[CLS] [SEP] [PAD]",
             "word " * 400, "a"]
    ref = st.SentenceTransformer(default_model_dir(), device="cpu").encode(texts, convert_to_tensor=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # the long text's truncation warning
        got = embedder.encode(texts)
        alone = torch.cat([embedder.encode([t]) for t in texts])
    assert torch.isfinite(got).all()
    assert (got - ref.cpu()).abs().max() < 1e-5
    assert (got - alone).abs().max() < 1e-5
