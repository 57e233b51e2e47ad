"""Chunking by the embedder's tokens: windows of `size`, consecutive windows share exactly `overlap` tokens."""

from pydoc_data.topics import topics

import pytest

from mlcore.rag import chunk_text


@pytest.mark.parametrize("size,overlap", [(64, 16), (50, 0), (32, 31)])
def test_windows_cover_text_with_overlap(embedder, size, overlap):
    tok = embedder.tokenizer
    text = topics["assert"]
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    chunks = chunk_text(text, tok, size=size, overlap=overlap)
    assert chunks[0].token_start == 0 and chunks[-1].token_end == n
    for a, b in zip(chunks, chunks[1:]):
        assert b.token_start == a.token_end - overlap                  # exactly `overlap` tokens shared
        assert a.token_end - a.token_start == size
    for c in chunks:
        assert c.text == text[c.start:c.end]
        assert len(tok(c.text, add_special_tokens=False)["input_ids"]) <= size + 2   # re-tokenizing may merge


def test_short_and_empty_text(embedder):
    assert [c.text for c in chunk_text("A short text.", embedder.tokenizer)] == ["A short text."]
    assert chunk_text("", embedder.tokenizer) == []


def test_bad_arguments(embedder):
    with pytest.raises(ValueError, match="overlap"):
        chunk_text("x", embedder.tokenizer, size=8, overlap=8)
    with pytest.raises(ValueError, match="size"):
        chunk_text("x", embedder.tokenizer, size=0)
    with pytest.raises(ValueError, match="text"):
        chunk_text(None, embedder.tokenizer)
