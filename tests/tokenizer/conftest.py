"""Shared fixtures: the pydoc corpus and tokenizers trained on it once per session (well under a second)."""

import pytest

from mlcore.tokenizer import BPETokenizer
from mlcore.tokenizer.train_corpus import pydoc_corpus

from .bpe_strategies import SPECIALS


@pytest.fixture(scope="session")
def corpus() -> str:
    return pydoc_corpus()


@pytest.fixture(scope="session")
def tok(corpus) -> BPETokenizer:
    """The project's configuration at a smaller vocabulary, with three special tokens."""
    return BPETokenizer.train(corpus, 1024, special_tokens=SPECIALS)


@pytest.fixture(scope="session")
def tok_big(corpus) -> BPETokenizer:
    return BPETokenizer.train(corpus, 4096, special_tokens=["<|endoftext|>"])
