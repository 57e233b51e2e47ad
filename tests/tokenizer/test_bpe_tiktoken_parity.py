"""Our encoder against ``tiktoken.Encoding`` built from our own ranks, pattern and special tokens."""

import pytest
import regex
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from mlcore.tokenizer import GPT2_PATTERN, BPETokenizer

from .bpe_strategies import unicode_text


def test_export_is_a_tiktoken_encoding(tok):
    enc = tok.to_tiktoken()
    assert isinstance(enc, tiktoken.Encoding)
    assert enc.n_vocab == tok.vocab_size
    assert enc._pat_str == tok.pattern
    assert enc._special_tokens == tok.special_tokens
    assert all(enc.decode_single_token_bytes(i) == tok.token_bytes(i) for i in range(tok.vocab_size))


@pytest.mark.parametrize("which", ["tok", "tok_big"])
def test_corpus_encodes_like_tiktoken(request, corpus, which):
    t = request.getfixturevalue(which)
    enc = t.to_tiktoken()
    ids = t.encode_ordinary(corpus)
    assert ids == enc.encode_ordinary(corpus)
    assert t.decode(ids) == corpus
    assert enc.decode(ids) == corpus


@settings(max_examples=50, deadline=None)
@given(unicode_text)
def test_random_unicode_encodes_like_tiktoken(tok, text):
    enc = tok.to_tiktoken()
    ids = tok.encode_ordinary(text)
    assert ids == enc.encode_ordinary(text)
    assert tok.decode(ids) == text


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 1023), max_size=30))
def test_decode_of_any_ids_is_tiktoken_decode(tok, ids):
    """Random ids cut UTF-8 characters apart: both give U+FFFD, neither raises."""
    assert tok.decode(ids) == tok.to_tiktoken().decode(ids)
    assert tok.decode_bytes(ids) == tok.to_tiktoken().decode_bytes(ids)


def test_lone_surrogates_are_repaired_like_tiktoken(tok):
    text = "a\ud83d\ude00b \ud800 c"  # a surrogate *pair* written as two code points, and a lone one
    assert tok.encode_ordinary(text) == tok.to_tiktoken().encode_ordinary(text)


def test_gpt2_pattern_also_matches(corpus):
    t = BPETokenizer.train(corpus[:50_000], 400, pattern=GPT2_PATTERN)
    text = corpus[50_000:80_000] + " 12345 you'll  \n\n x"
    assert t.encode(text) == t.to_tiktoken().encode(text)


def test_merge_order_is_rank_order_on_overlaps(tok):
    """Runs where merges overlap or compete ('----', long spaces, repeated letters)."""
    enc = tok.to_tiktoken()
    for text in ["-" * 37, " " * 33 + "x", "aaaaaaa", "eeeeeeeeee", "\n" * 9, "0" * 20, "ab" * 15]:
        assert tok.encode_ordinary(text) == enc.encode_ordinary(text), text


@settings(max_examples=30, deadline=None)
@given(st.text(st.sampled_from("etaoinsh"), min_size=65, max_size=400),
       st.text(st.sampled_from(" -=\n"), min_size=65, max_size=400))
def test_long_pieces_take_the_heap_path_and_still_match(tok_big, letters, symbols):
    """One long word / one long run of symbols is a single pre-token of > 64 bytes (``LONG_PIECE``)."""
    enc = tok_big.to_tiktoken()
    for text in (letters, symbols, letters + symbols):
        assert tok_big.encode_ordinary(text) == enc.encode_ordinary(text)


def test_a_huge_whitespace_run_is_fast(tok):
    import time

    text = " " * 50_000 + "x"
    start = time.perf_counter()
    ids = tok.encode(text)
    assert time.perf_counter() - start < 5.0  # the quadratic loop would take minutes
    assert ids == tok.to_tiktoken().encode(text)


@pytest.mark.parametrize("pattern", ["gpt4", "gpt2"])
def test_letters_and_numbers_new_in_unicode_17_split_as_tiktoken(pattern):
    """The `regex` package knows Unicode 17.0, tiktoken's engine 16.0 tables: a character 17.0 added (e.g. U+0558,
    Tangut, CJK Extension J, U+11DE0 digits) is no letter or number for tiktoken. With merges of a context byte
    and every byte, a chunk boundary after the context character shows in the ids."""
    from mlcore.tokenizer import GPT4_PATTERN
    from mlcore.tokenizer.unicode_version import UNICODE17_LETTERS, UNICODE17_NUMBERS

    merges, nid = [], 256
    for ctx in "a1":
        for b in range(256):
            merges.append(((ord(ctx), b), nid))
            nid += 1
    tok = BPETokenizer(merges, pattern=GPT4_PATTERN if pattern == "gpt4" else GPT2_PATTERN)
    enc = tok.to_tiktoken()
    points = [cp for a, b in UNICODE17_LETTERS + UNICODE17_NUMBERS for cp in (a, (a + b) // 2, b)]
    for cp in points:
        for text in (f"a{chr(cp)}a", f"1{chr(cp)}1", f"x {chr(cp)}!", f"{chr(cp)}{chr(cp)} 12"):
            assert tok.encode(text) == enc.encode_ordinary(text), hex(cp)
    assert tok.encode("plain text, no new characters") == enc.encode_ordinary("plain text, no new characters")


def _o200k_pat_str() -> str:
    """o200k_base's published pattern, read from tiktoken_ext without downloading the ranks."""
    import tiktoken_ext.openai_public as public

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(public, "load_tiktoken_bpe", lambda *args, **kwargs: {})
        return public.o200k_base()["pat_str"]


@pytest.mark.parametrize("pattern", ["o200k", r"\p{Lu}+|\P{Lu}", r"\p{Ll}+|\p{Lo}+|\p{M}+|\p{Nd}+|\p{So}+|\s+|.",
                                     r"[^\p{Cn}]+|\p{C}+"])
def test_every_general_category_splits_as_tiktoken_on_unicode_17_characters(pattern):
    """Not only ``\\p{L}`` / ``\\p{N}``: o200k's ``\\p{Lu}``, ``\\p{Lo}``, ``\\p{M}`` (and any general category) must
    leave out what Unicode 17.0 added (U+0558, the marks U+1ACF.., Tangut, ...) and keep U+0295 ``ʕ`` lowercase (17.0
    moved it from Ll to Lo), as tiktoken's 16.0 tables do. The `regex` package's 17.0 tables split them differently."""
    from mlcore.tokenizer.unicode_version import RECLASSIFIED, UNICODE17_NEW

    merges, nid = [], 256
    for ctx in "aA1":
        for b in range(256):
            merges.append(((ord(ctx), b), nid))
            nid += 1
    tok = BPETokenizer(merges, pattern=_o200k_pat_str() if pattern == "o200k" else pattern)
    enc = tok.to_tiktoken()
    points = [*RECLASSIFIED, *(cp for a, b in UNICODE17_NEW for cp in (a, (a + b) // 2, b))]
    for cp in points:
        c = chr(cp)
        for text in (f"a{c}a", f"A{c}A", f"1{c}1", f"A{c}b's", f"x {c}{c}!", f"{c}a"):
            assert tok.encode(text) == enc.encode_ordinary(text), (hex(cp), text)


def test_only_letters_and_numbers_send_gpt4_text_to_the_slower_unicode_16_pattern():
    """The fast path stays as fast: for ``\\p{L}`` / ``\\p{N}`` patterns an emoji 17.0 added (U+1FAC8) changes no
    class, so its text keeps the given pattern; o200k's ``\\p{Ll}`` / ``\\p{Lo}`` also watch U+0295."""
    from mlcore.tokenizer import GPT4_PATTERN
    from mlcore.tokenizer.unicode_version import UNICODE17_LETTERS, UNICODE17_NUMBERS, affected_chars

    if not regex.match(r"\p{L}", "\u0558"):
        pytest.skip("this regex package has Unicode 16.0 tables: no character differs, nothing is rewritten")
    letters_and_numbers = {chr(c) for a, b in UNICODE17_LETTERS + UNICODE17_NUMBERS for c in range(a, b + 1)}
    assert affected_chars(GPT4_PATTERN) == affected_chars(GPT2_PATTERN) == letters_and_numbers
    assert "\U0001fac8" not in affected_chars(GPT4_PATTERN) and "\U0001fac8" in affected_chars(r"\p{So}|.")
    assert "\u0295" in affected_chars(_o200k_pat_str()) and affected_chars(r"\s+|\S") == frozenset()
