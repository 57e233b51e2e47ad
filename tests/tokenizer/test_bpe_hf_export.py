"""The exported JSON against Hugging Face ``tokenizers`` itself: it loads and gives the same ids."""

import json
import warnings

import pytest
from hypothesis import given, settings
from tokenizers import Tokenizer

from mlcore.tokenizer import GPT2_PATTERN, GPT4_PATTERN, BPETokenizer
from mlcore.tokenizer.export import byte_level_string, bytes_to_unicode

from .bpe_strategies import unicode_text


@pytest.fixture(scope="module")
def hf(tok) -> Tokenizer:
    return Tokenizer.from_str(tok.to_hf_json())


def test_byte_table_is_gpt2s():
    """Our byte -> character table against the one HF's ByteLevel pre-tokenizer applies."""
    from tokenizers.pre_tokenizers import ByteLevel

    assert sorted(bytes_to_unicode().values()) == sorted(ByteLevel.alphabet())
    pre = ByteLevel(add_prefix_space=False, use_regex=False)
    chars = [chr(c) for c in range(0, 0x110000, 0x3F) if not 0xD800 <= c < 0xE000]  # hits every valid byte
    text = "".join(chars)
    assert pre.pre_tokenize_str(text)[0][0] == byte_level_string(text.encode("utf-8"))


def test_settings(tok):
    model = json.loads(tok.to_hf_json())["model"]
    assert model["type"] == "BPE" and model["ignore_merges"] is True and model["byte_fallback"] is False
    assert model["unk_token"] is None and model["dropout"] is None


def test_vocab_and_specials(tok, hf):
    assert hf.get_vocab_size(with_added_tokens=True) == tok.vocab_size
    for s, i in tok.special_tokens.items():
        assert hf.token_to_id(s) == i


@pytest.mark.parametrize("which", ["tok", "tok_big"])
def test_corpus_ids_match(request, corpus, which):
    t = request.getfixturevalue(which)
    h = Tokenizer.from_str(t.to_hf_json())
    ids = t.encode_ordinary(corpus)
    assert h.encode(corpus, add_special_tokens=False).ids == ids
    assert h.decode(ids) == corpus


@settings(max_examples=50, deadline=None)
@given(unicode_text)
def test_random_unicode_ids_match(tok, hf, text):
    ids = tok.encode(text, allowed_special="all")  # HF always maps special-token text to its id
    assert hf.encode(text, add_special_tokens=False).ids == ids
    assert hf.decode(ids, skip_special_tokens=False) == text


def test_save_hf_writes_loadable_file(tok, tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.save_hf(path)
    assert Tokenizer.from_file(str(path)).encode("Hello, world!").ids == tok.encode("Hello, world!")


def _hf_and_tiktoken(merges):
    t = BPETokenizer(merges)
    return t, Tokenizer.from_str(t.to_hf_json()), t.to_tiktoken()


def test_merges_by_bytes_not_by_pair():
    """'abc' learned as ab+c; in 'abcd', bc merges first, then a+bc must still give 'abc' (tiktoken ranks
    bytes). HF only applies listed pairs, so the export must list the split a+bc too."""
    a, b, c = ord("a"), ord("b"), ord("c")
    t, hf, enc = _hf_and_tiktoken([((b, c), 256), ((a, b), 257), ((257, c), 258)])
    for text in ["abcd", "xabc", "abc abcabc"]:
        assert hf.encode(text).ids == enc.encode_ordinary(text) == t.encode_ordinary(text), text
    assert enc.encode_ordinary("abcd") == [258, ord("d")]


def test_whole_pretoken_shortcut_needs_ignore_merges():
    """'abcd' is a token (ab+cd) that rank-ordered merging cannot reach (bc goes first); tiktoken takes a
    pre-token that is a token whole, HF does so only with ignore_merges=True."""
    a, b, c, d = (ord(x) for x in "abcd")
    t, hf, enc = _hf_and_tiktoken([((b, c), 256), ((a, b), 257), ((c, d), 258), ((257, 258), 259)])
    assert enc.encode_ordinary("abcd") == [259] == hf.encode("abcd").ids == t.encode_ordinary("abcd")
    assert enc.encode_ordinary("xabcd") == hf.encode("xabcd").ids == t.encode_ordinary("xabcd")
    spec = json.loads(t.to_hf_json())
    spec["model"]["ignore_merges"] = False
    assert Tokenizer.from_str(json.dumps(spec)).encode("abcd").ids != [259]  # the setting matters


@pytest.mark.parametrize("special", ["a", "é", " "])
def test_special_token_clashing_with_a_vocab_entry_is_refused(corpus, special):
    """Regression: HF gives an added token whose text is already a (byte-level) vocab entry that entry's id, so
    the export silently encoded the special "a" (or "é", byte 0xE9's printable name) as an ordinary token."""
    t = BPETokenizer.train(corpus[:20000], 300, special_tokens=[special])
    if special in {byte_level_string(b) for b in t.vocab}:
        with pytest.raises(ValueError, match="special tokens"):
            t.to_hf_json()
    else:  # " " is stored as "Ġ": no clash, and HF must then give the special id
        assert Tokenizer.from_str(t.to_hf_json()).encode(f"x{special}y").ids == t.encode(f"x{special}y", allowed_special="all")


SPECIALS_IN_THE_BYTE_TABLE = ["«sep»", "<|Ġ|>", "<|día|>", "ÿ¡", "<|endoftext|>", "<|日本|>", "<|dí a|>"]


def test_non_ascii_special_tokens_decode_in_the_hf_export():
    """Regression: HF's ByteLevel decoder read "«sep»" as byte-level text ("«" = byte 0xAB) and gave 'a�sep�b'."""
    import warnings

    tok = BPETokenizer.train("hello world the cat " * 20, 256 + 8 + len(SPECIALS_IN_THE_BYTE_TABLE),
                             special_tokens=SPECIALS_IN_THE_BYTE_TABLE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hf = Tokenizer.from_str(tok.to_hf_json())
    for text in ["a«sep»b", "x<|Ġ|>y", "hola<|día|>", "ÿ¡ÿ¡ÿ", "q<|日本|> the<|endoftext|>", "<|dí a|>z",
                 "the cat «sep» Ġ día ÿ¡"]:
        ids = tok.encode(text, allowed_special="all")
        assert hf.encode(text, add_special_tokens=False).ids == ids
        assert hf.decode(ids, skip_special_tokens=False) == tok.decode(ids) == text
        assert hf.decode(ids, skip_special_tokens=True) == tok.decode(
            [i for i in ids if i < tok.num_ordinary])


def test_special_token_that_cannot_decode_in_hf_warns():
    """An ordinary token whose byte-level name holds the special token's text would be changed by the fix."""
    # "««" as UTF-8 is C2 AB C2 AB; its byte-level name is "Â«Â«", which holds "«Â"
    tok = BPETokenizer([((0xC2, 0xAB), 256), ((256, 256), 257)], special_tokens={"«Â": 258})
    assert any("«Â" in byte_level_string(b) for b in tok.vocab)
    with pytest.warns(UserWarning, match="«Â"):
        tok.to_hf_json()


def test_pattern_that_drops_characters_warns_at_hf_export():
    """mlcore/tiktoken drop text the pattern does not match; HF's Split keeps it, so the ids differ."""
    tok = BPETokenizer.train("hello world, the quick brown fox " * 10, 270, pattern=r"\p{L}+")
    with pytest.warns(UserWarning, match="does not match every character"):
        tok.to_hf_json()


def test_pattern_that_oniguruma_splits_differently_warns_at_hf_export():
    """Regression: tiktoken's own cl100k pattern (``\\p{N}{1,3}+``) exported silently, yet HF's Oniguruma reads
    ``{1,3}+`` as a repetition and keeps "12345" whole, where mlcore and tiktoken cut "123" + "45"."""
    import tiktoken_ext.openai_public as public

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(public, "load_tiktoken_bpe", lambda *args, **kwargs: {})
        cl100k = public.cl100k_base()["pat_str"]
    tok = BPETokenizer([((51, 52), 256), ((49, 50), 257)], pattern=cl100k)  # "34" (across the cut "123|45"), "12"
    hf = Tokenizer.from_str(_quiet_json(tok))
    assert hf.encode("12345").ids != tok.encode("12345") == tok.to_tiktoken().encode("12345")  # the difference
    with pytest.warns(UserWarning, match="splits text differently"):
        tok.to_hf_json()
    with pytest.warns(UserWarning, match="cannot compile"):
        BPETokenizer([], pattern=r"(?V1)[\p{L}--[a]]+|\s+|.").to_hf_json()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shipped patterns split alike in both engines: no warning
        for pattern in (GPT4_PATTERN, GPT2_PATTERN):
            BPETokenizer([], pattern=pattern).to_hf_json()


def _quiet_json(tok: BPETokenizer) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tok.to_hf_json()
