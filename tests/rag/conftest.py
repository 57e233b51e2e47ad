"""Shared fixtures for the RAG tests: the MiniLM embedder is loaded once per session (a second or two)."""

import pytest

from mlcore.rag import Embedder, chunk_sections, pydoc_sections


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture(scope="session")
def small_corpus(embedder):
    """20 reference sections cut at 700 characters, chunked by 64 tokens with 16 of overlap."""
    sections = pydoc_sections(limit=20, max_chars=700)
    return sections, chunk_sections(sections, embedder.tokenizer, size=64, overlap=16)


PII_PASSAGE = ("Refunds: write to jane.doe@example.com or call +44 20 7946 0958 about the assert statement refund.")


@pytest.fixture(scope="session")
def small_retriever(embedder, small_corpus):
    """BM25 + exact index over the small corpus' chunks plus one passage holding PII (section -1), built once."""
    from mlcore.rag import Retriever

    _, passages = small_corpus
    retriever = Retriever.build([p.text for p in passages] + [PII_PASSAGE], embedder)
    return retriever, [p.section for p in passages] + [-1]
