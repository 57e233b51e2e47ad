"""Okapi BM25 from scratch (Robertson & Zaragoza 2009), in the Lucene form that ``bm25s`` uses by default.

For a query ``q`` and a document ``d`` of length ``|d|`` (tokens), with ``N`` documents of mean length
``avgdl``, ``df(t)`` the number of documents holding term ``t`` and ``tf(t, d)`` its count in ``d``:

    idf(t)      = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))                    (never negative)
    score(q, d) = sum_{t in q} idf(t) · tf(t, d) / (tf(t, d) + k1 · (1 - b + b · |d| / avgdl))

``k1`` saturates repeated terms, ``b`` normalises for length. This is the "Lucene (accurate)" variant of
Kamphuis et al. 2020 (classic Okapi multiplies each term by ``k1 + 1``, a constant that changes no ranking).
Twin: ``bm25s.BM25(method="lucene")`` gives equal scores on the same tokens, ``k1`` and ``b`` (test); rank-bm25's
``BM25Okapi`` was not chosen because its idf, ``ln((N - df + 0.5) / (df + 0.5))`` with negative values replaced
by ``epsilon`` times the mean idf, depends on the whole vocabulary. A query term repeated counts once per
occurrence, as in bm25s.

The index is inverted: for each term, the documents holding it and their precomputed term scores, so a query
touches only its terms' postings: ``scores[docs_t] += w_t`` (a scatter-add per query term).
"""

from __future__ import annotations

import math
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import Tensor


@lru_cache(maxsize=1)
def _word_pattern() -> re.Pattern[str]:
    """A word: a ``\\w`` character followed by ``\\w`` characters and combining marks.

    Python's ``\\w`` holds no combining mark (Unicode categories Mn, Mc, Me), so ``\\w+`` alone cut Devanagari,
    Bengali, Tamil ... words at every vowel sign and dropped the signs (``"हिन्दी" -> ["ह", "न", "द"]``), shredded
    vocalised Arabic / Hebrew into single letters, and split a decomposed Latin word (``"nai\\u0308ve" ->
    ["nai", "ve"]``). ``re`` has no ``\\p{M}``, so the marks' class is built once from ``unicodedata``.
    """
    ranges: list[str] = []
    start = prev = -2
    for cp in range(sys.maxunicode + 1):
        if unicodedata.category(chr(cp)) in ("Mn", "Mc", "Me"):
            if cp != prev + 1:
                if start >= 0:
                    ranges.append(f"{re.escape(chr(start))}-{re.escape(chr(prev))}")
                start = cp
            prev = cp
    ranges.append(f"{re.escape(chr(start))}-{re.escape(chr(prev))}")
    return re.compile(rf"\w[\w{''.join(ranges)}]*")


def simple_tokenize(text: str) -> list[str]:
    """Lower-cased word tokens: runs of ``\\w`` characters and the combining marks inside them, in Unicode NFC.

    NFC makes a precomposed ``"é"`` and ``"e" + U+0301`` the same token; keeping marks keeps scripts whose vowel
    signs are marks (Devanagari, Thai, vocalised Arabic) in whole words. A mark with no word character before it
    is dropped. This is the tokenization both BM25 and its twin are fed in the tests.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    return _word_pattern().findall(unicodedata.normalize("NFC", text.lower()))


class BM25:
    """BM25 over pre-tokenized documents (lists of str). ``scores(query_tokens) -> (N,)`` float64."""

    def __init__(self, corpus_tokens: Sequence[Sequence[str]], *, k1: float = 1.5, b: float = 0.75) -> None:
        if isinstance(corpus_tokens, str) or len(corpus_tokens) == 0:
            raise ValueError("corpus_tokens must be a non-empty list of token lists (an empty corpus has "
                             "nothing to retrieve)")
        if not all(isinstance(d, (list, tuple)) for d in corpus_tokens):
            raise ValueError("corpus_tokens must hold token lists (list[str] per document), not raw strings; "
                             "tokenize first, e.g. with simple_tokenize")
        if not all(isinstance(t, str) for d in corpus_tokens for t in d):
            raise ValueError("corpus_tokens must hold str tokens")
        if isinstance(k1, bool) or not (isinstance(k1, (int, float)) and k1 >= 0 and math.isfinite(k1)):
            raise ValueError(f"k1 must be a finite number >= 0, got {k1!r}")
        if isinstance(b, bool) or not (isinstance(b, (int, float)) and 0 <= b <= 1):
            raise ValueError(f"b must be in [0, 1], got {b!r}")
        self.k1, self.b, self.n_docs = float(k1), float(b), len(corpus_tokens)
        lengths = torch.tensor([len(d) for d in corpus_tokens], dtype=torch.float64)
        avgdl = float(lengths.mean())
        if avgdl == 0:
            raise ValueError("corpus_tokens holds only empty documents: nothing to score")
        norm = self.k1 * (1 - self.b + self.b * lengths / avgdl)              # (N,) per-document denominator part
        postings: dict[str, tuple[list[int], list[float]]] = {}
        for i, doc in enumerate(corpus_tokens):
            for term, tf in Counter(doc).items():
                docs, tfs = postings.setdefault(term, ([], []))
                docs.append(i)
                tfs.append(float(tf))
        self.idf: dict[str, float] = {}
        self.postings: dict[str, tuple[Tensor, Tensor]] = {}
        for term, (docs, tfs) in postings.items():
            df = len(docs)
            self.idf[term] = math.log(1 + (self.n_docs - df + 0.5) / (df + 0.5))
            d, tf = torch.tensor(docs), torch.tensor(tfs, dtype=torch.float64)
            self.postings[term] = (d, self.idf[term] * tf / (tf + norm[d]))

    @classmethod
    def from_texts(cls, texts: Sequence[str], *, k1: float = 1.5, b: float = 0.75) -> BM25:
        """Index raw texts with :func:`simple_tokenize`."""
        if isinstance(texts, str):
            raise ValueError("texts must be a list of str, got a single str")
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a list of str, got non-str items")
        return cls([simple_tokenize(t) for t in texts], k1=k1, b=b)

    def scores(self, query_tokens: Sequence[str]) -> Tensor:
        """``(N,)`` BM25 score of every document for the query's tokens (0 where no term matches)."""
        if isinstance(query_tokens, str):
            raise ValueError("query_tokens must be a list of str tokens, got a str; use search() for raw text")
        if not isinstance(query_tokens, (list, tuple)) or not all(isinstance(t, str) for t in query_tokens):
            raise ValueError(f"query_tokens must be a list of str tokens, got {query_tokens!r:.80}")
        out = torch.zeros(self.n_docs, dtype=torch.float64)
        for term in query_tokens:
            if term in self.postings:
                docs, weights = self.postings[term]
                out.index_add_(0, docs, weights)
        return out

    def search(self, query: str, k: int = 10) -> tuple[Tensor, Tensor]:
        """Top ``k`` documents for a raw-text query: ``(scores (k,), indices (k,))``, best first."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if not isinstance(query, str):
            raise ValueError(f"query must be a str, got {type(query).__name__}")
        s = self.scores(simple_tokenize(query))
        top = torch.sort(s, descending=True, stable=True)  # equal scores: lower id first
        return top.values[:k], top.indices[:k]
