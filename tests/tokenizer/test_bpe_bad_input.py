"""Bad input gives clear ValueErrors; save/load round-trips."""

import pytest

from mlcore.tokenizer import BPETokenizer


def test_save_load_roundtrip(tok, corpus, tmp_path):
    path = tmp_path / "tok.bpe"
    tok.save(path)
    back = BPETokenizer.load(path)
    assert back.merges == tok.merges and back.special_tokens == tok.special_tokens
    assert back.pattern == tok.pattern
    text = corpus[:5000] + "<|endoftext|>"
    assert back.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
    assert path.read_text(encoding="utf-8").startswith("mlcore-bpe 1\n")


def test_vocab_size_too_small(corpus):
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer.train(corpus, 255)
    with pytest.raises(ValueError, match=r"256 \+ 2"):
        BPETokenizer.train(corpus, 257, special_tokens=["<a>", "<b>"])
    assert BPETokenizer.train(corpus, 258, special_tokens=["<a>", "<b>"]).vocab_size == 258


def test_corpus_too_small_says_how_many_merges():
    with pytest.raises(ValueError, match=r"only 3 merges were possible \(10 needed\)") as exc:
        BPETokenizer.train("abcd", 266)
    assert "vocab_size=266" in str(exc.value)
    with pytest.raises(ValueError, match="only 3 merges"):
        BPETokenizer.train("abcd", 266, trainer="naive")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.replace("mlcore-bpe 1", "mlcore-bpe 2", 1), "version '2' is not supported"),
        (lambda s: s.replace("mlcore-bpe 1", "minbpe v1", 1), "header"),
        (lambda s: s[: len(s) // 2], "ends early"),
        (lambda s: s.replace("merges ", "merge ", 1), "merges N"),
        (lambda s: s.replace("\n300 ", "\n99999 ", 1), "outside"),
        (lambda s: s + "1 2 3\n", "unexpected content"),
        (lambda s: s.replace('pattern "', 'pattern "\\x', 1), "corrupt"),
        (lambda s: "", "header"),
    ],
)
def test_corrupt_files(tok, tmp_path, edit, message):
    path = tmp_path / "tok.bpe"
    tok.save(path)
    path.write_text(edit(path.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        BPETokenizer.load(path)


def test_binary_file(tmp_path):
    path = tmp_path / "tok.bpe"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="UTF-8"):
        BPETokenizer.load(path)


def test_decode_out_of_range(tok):
    with pytest.raises(ValueError, match=f"0 <= id < {tok.vocab_size}"):
        tok.decode([1, tok.vocab_size])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([-1])
    with pytest.raises(ValueError, match="integers"):
        tok.decode([1.5])


def test_decode_accepts_numpy_and_torch_ints(tok):
    import numpy as np
    import torch

    ids = tok.encode("hello world")
    assert tok.decode(np.array(ids)) == tok.decode(torch.tensor(ids)) == "hello world"


def test_invalid_utf8_becomes_replacement_char(tok):
    assert tok.decode([0xE6, 0x97]) == "\ufffd"  # two bytes of a three-byte character
    assert tok.decode([ord("a"), 0xFF, ord("b")]) == "a\ufffdb"


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="special_tokens ids"):
        BPETokenizer([], special_tokens={"<s>": 5})
    abc = [((98, 99), 256), ((97, 98), 257), ((257, 99), 258)]  # bc, ab, ab+c
    with pytest.raises(ValueError, match="appears twice"):
        BPETokenizer([*abc, ((98, 99), 259)])
    with pytest.raises(ValueError, match="unique"):
        BPETokenizer([*abc, ((97, 256), 259)])  # a+bc as a *new* token would repeat b"abc"
    assert BPETokenizer([*abc, ((97, 256), 258)]).vocab_size == 259  # a+bc rebuilding 258 is fine
    with pytest.raises(ValueError, match="pattern"):
        BPETokenizer([], pattern="(unclosed")
    with pytest.raises(ValueError, match="text must be a str"):
        BPETokenizer([]).encode(b"bytes")
    with pytest.raises(ValueError, match="trainer"):
        BPETokenizer.train("abc", 257, trainer="magic")


def test_special_tokens_as_dict_list_or_set(corpus):
    """Regression: a dict's ids were silently ignored (and could be swapped); a str became one token per char."""
    text = corpus[:20000]
    listed = BPETokenizer.train(text, 300, special_tokens=["<a>", "<b>"])
    as_dict = BPETokenizer.train(text, 300, special_tokens={"<b>": 299, "<a>": 298})
    assert as_dict.special_tokens == listed.special_tokens == {"<a>": 298, "<b>": 299}
    assert as_dict.to_tiktoken().encode("x<b>", allowed_special="all") == listed.encode("x<b>", allowed_special="all")
    assert BPETokenizer.train(text, 300, special_tokens={"<b>", "<a>"}).special_tokens == {"<a>": 298, "<b>": 299}
    with pytest.raises(ValueError, match="special_tokens ids"):
        BPETokenizer.train(text, 300, special_tokens={"<|endoftext|>": 100257})
    with pytest.raises(ValueError, match="single str"):
        BPETokenizer.train(text, 300, special_tokens="<eos>")


def test_allowed_special_as_a_plain_string_is_rejected(tok):
    """Regression: allowed/disallowed_special="none" was read as the set of its characters (tiktoken: TypeError)."""
    for kwargs in ({"allowed_special": "<|endoftext|>"}, {"disallowed_special": "none"}):
        with pytest.raises(ValueError, match="_special"):
            tok.encode("<|endoftext|>", **kwargs)
