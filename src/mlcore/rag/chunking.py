"""Chunking a document into overlapping windows of the embedder's tokens.

A text of ``n`` tokens becomes windows ``[s, s + size)`` for ``s = 0, step, 2 step, ...`` with
``step = size - overlap``, the last window ending at ``n``. Each chunk is the exact character span its tokens
cover (from the tokenizer's offset mapping), so nothing is re-tokenized differently and a sentence cut at one
window's edge appears whole in the next whenever it is shorter than the overlap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Chunk:
    """One window: its text, character span ``[start, end)`` in the document and token span."""

    text: str
    start: int
    end: int
    token_start: int
    token_end: int


def chunk_text(text: str, tokenizer: Any, *, size: int = 128, overlap: int = 32) -> list[Chunk]:
    """Cut ``text`` into windows of ``size`` tokens of ``tokenizer`` (a fast HF tokenizer) that overlap by
    ``overlap`` tokens. An empty or all-whitespace text gives no chunks."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int (tokens per chunk), got {size!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < size:
        raise ValueError(f"overlap must be an int in [0, size={size}), got {overlap!r}")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("tokenizer must be a fast Hugging Face tokenizer (it needs offset mappings)")
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    n, step, chunks = len(offsets), size - overlap, []
    for s in range(0, n, step):
        e = min(s + size, n)
        start, end = offsets[s][0], offsets[e - 1][1]
        chunks.append(Chunk(text[start:end], start, end, s, e))
        if e == n:
            break
    return chunks
