"""``GPT4_PATTERN`` splits exactly like tiktoken's published cl100k_base pattern, in tiktoken and in the HF export."""

import random

import pytest
import tiktoken
from tokenizers import Tokenizer

from mlcore.tokenizer import GPT4_PATTERN, BPETokenizer, split_text

# Merged tokens that make a difference in split visible as a difference in ids: white space runs with and
# without a newline (the "\s++$" alternative), digits, a word with its leading space.
MERGED = [b"\n ", b"\n  ", b"  ", b"   ", b"\n\n", b"\n\n ", b" \n", b"hi", b" x", b"12", b"123", b"'s"]

TEXTS = [
    "x\n  ", "hi\n\n ", "hi\n\n", "a \n", "  ", "\n", " \n \n  ", "x  ", "x\t\n", "12345 x\n\n  y \n  ",
    "don't\n   ", "héllo wörld!!\r\n  ", "", " ", "x \u3000", "a\u00a0\n ",
]


@pytest.fixture(scope="module")
def cl100k_pat_str(monkeypatch_module) -> str:
    """The published pattern, read from tiktoken_ext without downloading the ranks."""
    import tiktoken_ext.openai_public as public

    monkeypatch_module.setattr(public, "load_tiktoken_bpe", lambda *args, **kwargs: {})
    return public.cl100k_base()["pat_str"]


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _ranks() -> dict[bytes, int]:
    ranks = {bytes([i]): i for i in range(256)}
    for token in MERGED:
        ranks[token] = len(ranks)
    return ranks


def _merges() -> list[tuple[tuple[int, int], int]]:
    """MERGED as mlcore merges (each token is an earlier token + one byte, so it is built left to right)."""
    ranks = {bytes([i]): i for i in range(256)}
    merges = []
    for token in MERGED:
        prefix = token[:-1]
        if prefix not in ranks:  # build the missing prefix first (not needed for MERGED as listed)
            raise AssertionError(f"{token!r} needs {prefix!r} first")
        merges.append(((ranks[prefix], token[-1]), len(ranks)))
        ranks[token] = len(ranks)
    return merges


def _fuzz_texts(n: int = 400) -> list[str]:
    rng = random.Random(1234)
    alphabet = [" ", "  ", "\n", "\r", "\t", "\u00a0", "\u3000", "x", "hi", "A", "é", "1", "123", "'s", "'", "!", ".",
                "日本", "👍", "-", "\r\n"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(n)]


def test_gpt4_pattern_splits_like_published_cl100k(cl100k_pat_str):
    published = tiktoken.Encoding("cl100k-pattern", pat_str=cl100k_pat_str, mergeable_ranks=_ranks(),
                                  special_tokens={})
    ours = tiktoken.Encoding("gpt4-pattern", pat_str=GPT4_PATTERN, mergeable_ranks=_ranks(), special_tokens={})
    tok = BPETokenizer(_merges(), pattern=GPT4_PATTERN)
    assert tok.ranks == _ranks()
    for text in TEXTS + _fuzz_texts():
        expected = published.encode_ordinary(text)
        assert ours.encode_ordinary(text) == expected, text
        assert tok.encode_ordinary(text) == expected, text
    # the case the new "\s++$" alternative is about: trailing white space after a newline is one chunk
    assert split_text("x\n  ") == ["x", "\n  "]
    assert published.encode_ordinary("x\n  ") == [ord("x"), _ranks()[b"\n  "]]


def test_hf_export_splits_like_published_cl100k(cl100k_pat_str):
    published = tiktoken.Encoding("cl100k-pattern", pat_str=cl100k_pat_str, mergeable_ranks=_ranks(),
                                  special_tokens={})
    tok = BPETokenizer(_merges(), pattern=GPT4_PATTERN)
    hf = Tokenizer.from_str(tok.to_hf_json())
    for text in TEXTS + _fuzz_texts():
        assert hf.encode(text, add_special_tokens=False).ids == published.encode_ordinary(text), text
