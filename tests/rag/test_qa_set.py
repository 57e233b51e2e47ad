"""The labelled question set from pydoc_data.topics, and retrieval quality on it (a floor, so it can fail)."""

import pytest

from mlcore.rag import Retriever, build_qa_set, dedupe, mrr, pydoc_sections, recall_at_k, split_qa
from mlcore.rag.qa_set import first_sentence


def test_sections_and_questions():
    sections = pydoc_sections()
    assert len(sections) > 100
    assert len({s.heading for s in sections}) == len(sections)        # one gold section per heading
    items = build_qa_set(sections)
    assert len(items) > 0.9 * len(sections)
    by_id = {s.id: s for s in sections}
    for it in items:
        body = " ".join(by_id[it.section].body.split())
        assert it.answer.rstrip(".:") in body                              # the answer is the section's own text
        assert it.question.endswith(("?", "."))
    train, test = split_qa(items, seed=0)
    assert not {(i.question, i.section) for i in train} & {(i.question, i.section) for i in test}
    assert len(train) + len(test) == len(items)


def test_first_sentence_skips_grammar_and_notes():
    body = "New in version 3.5.\n\n   stmt ::= x\n\nA coroutine can be suspended. More text."
    assert first_sentence(body) == "A coroutine can be suspended."
    assert first_sentence("   code only") is None


def test_retrieval_quality_floor(embedder, small_corpus, small_retriever):
    sections, _ = small_corpus
    items = build_qa_set(sections)
    r, section_of = small_retriever
    relevant = [{it.section} for it in items]
    scores = {}
    for mode in ("bm25", "dense", "hybrid"):
        ranked = [dedupe(x, section_of) for x in r.rank_all([it.question for it in items], mode=mode, depth=20)]
        scores[mode] = (recall_at_k(ranked, relevant, 5), mrr(ranked, relevant))
    assert scores["hybrid"][0] >= 0.7, scores                             # 20 sections: chance would be 0.25
    assert scores["dense"][1] >= 0.4, scores
    with pytest.raises(ValueError, match="mode"):
        r.rank_all(["q"], mode="sparse")
    with pytest.raises(ValueError, match="empty corpus"):
        Retriever.build([], embedder)


def test_bad_section_limits_and_split_fraction_are_named():
    # max_chars=0 silently meant "no cut", max_chars=-5 cut the end off every body; split_qa("0.4") TypeError
    assert all(len(s.body) <= 50 for s in pydoc_sections(limit=3, max_chars=50))
    for kwargs in ({"max_chars": 0}, {"max_chars": -5}, {"min_chars": -1}, {"limit": 0}):
        with pytest.raises(ValueError, match=f"{next(iter(kwargs))} must be"):
            pydoc_sections(**kwargs)
    items = build_qa_set(pydoc_sections(limit=6))
    with pytest.raises(ValueError, match="test_fraction"):
        split_qa(items, test_fraction="0.4")
