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
        # cut at a line boundary: a cut inside a line leaves a partial last line, which the loader reports as that
        # line being wrong (and where the middle falls depends on the merges, so on the split pattern)
        (lambda s: "".join(s.splitlines(keepends=True)[: s.count("\n") // 2]), "ends early"),
        (lambda s: s[: s.index("\n", len(s) // 2) - 1], "ends early|expected a merge|merges\\[|expected the next"),
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


def test_decode_of_a_non_sequence_names_ids(tok):
    """Regression: ``decode(5)`` / ``decode(None)`` failed with "'int' object is not iterable" (tiktoken also raises a
    TypeError; transformers' decode takes a bare id, so this is an easy slip when porting)."""
    with pytest.raises(TypeError, match=r"ids must be a sequence of token ids, got int \(for one id, pass \[5\]\)"):
        tok.decode(5)
    with pytest.raises(TypeError, match="ids must be a sequence of token ids, got NoneType"):
        tok.decode_bytes(None)
    with pytest.raises(TypeError):
        tok.to_tiktoken().decode(5)


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


@pytest.mark.parametrize(
    ("line", "message"),
    [("260 [1]", "special token"), ('260 {"a": 1}', "special token"), ("260 1.5", "special token"),
     ("260 null", "special token")],
)
def test_corrupt_special_token_line_is_a_value_error(tmp_path, line, message):
    """Regression: a special-token line whose JSON is not a string gave a bare TypeError (unhashable list)."""
    tok = BPETokenizer.train("hello world " * 10, 261, special_tokens=["<|endoftext|>"])
    path = tmp_path / "tok.bpe"
    tok.save(path)
    text = path.read_text(encoding="utf-8")
    assert '260 "<|endoftext|>"' in text
    path.write_text(text.replace('260 "<|endoftext|>"', line), encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        BPETokenizer.load(path)


@pytest.mark.parametrize(
    "edit",
    [lambda s: s.replace('special_tokens 1\n260 "<|endoftext|>"\n', "special_tokens -7\n"),
     lambda s: s.replace("merges 4\n", "merges -1\n").split("merges -1\n")[0] + "merges -1\n",
     lambda s: s.replace('special_tokens 1\n260 "<|endoftext|>"\n',
                         'special_tokens 2\n260 "<|endoftext|>"\n260 "<|endoftext|>"\n')],
    ids=["negative special count", "negative merge count", "special token twice"],
)
def test_negative_counts_and_repeated_specials_are_refused(tmp_path, edit):
    """Regression: "special_tokens -7" loaded silently, as a tokenizer without special tokens."""
    tok = BPETokenizer.train("hello world " * 10, 261, special_tokens=["<|endoftext|>"])
    path = tmp_path / "tok.bpe"
    tok.save(path)
    text = path.read_text(encoding="utf-8")
    assert "merges 4\n" in text
    path.write_text(edit(text), encoding="utf-8")
    with pytest.raises(ValueError, match=r"count >= 0|listed before"):
        BPETokenizer.load(path)


def test_special_token_with_a_lone_surrogate_is_refused(tmp_path):
    """Regression: "<\\ud800>" was accepted, then decode, to_tiktoken and save_hf failed with UnicodeEncodeError."""
    with pytest.raises(ValueError, match="surrogate"):
        BPETokenizer.train("hello world " * 10, 261, special_tokens=["<\ud800>"])
    with pytest.raises(ValueError, match="surrogate"):
        BPETokenizer([], special_tokens={"<\ud800>": 256})
    path = tmp_path / "tok.bpe"
    BPETokenizer([], special_tokens={"<x>": 256}).save(path)
    path.write_text(path.read_text(encoding="utf-8").replace('"<x>"', '"<\\ud800>"'), encoding="utf-8")
    with pytest.raises(ValueError, match="surrogate"):
        BPETokenizer.load(path)


def test_special_arguments_of_the_wrong_type_name_the_argument(tok):
    """Regression: None or a set of non-strings gave a bare TypeError (or was silently ignored)."""
    with pytest.raises(ValueError, match="allowed_special"):
        tok.encode("x", allowed_special=None)
    with pytest.raises(ValueError, match="allowed_special"):
        tok.encode("x", allowed_special={1})
    with pytest.raises(ValueError, match="disallowed_special"):
        tok.encode("x", disallowed_special={1})
    with pytest.raises(ValueError, match="disallowed_special"):
        tok.encode("x", disallowed_special=[["<|endoftext|>"]])
    with pytest.raises(ValueError, match="allowed_special"):
        tok.encode("x", allowed_special=5)


def test_disallowed_special_none_checks_nothing_like_tiktoken(tok):
    text = "a <|endoftext|> b"
    assert tok.encode(text, disallowed_special=None) == tok.to_tiktoken().encode(text, disallowed_special=None)
    assert tok.encode(text, disallowed_special=None) == tok.encode(text, disallowed_special=())


def test_special_token_found_in_the_repaired_text_like_tiktoken():
    """tiktoken repairs lone surrogates (-> U+FFFD) before it looks for allowed special tokens."""
    tok = BPETokenizer.train("hello world " * 10, 262, special_tokens=["<|endoftext|>", "<|a\ufffdb|>"])
    text = "x <|a\ud800b|> y"
    assert tok.encode(text, allowed_special="all") == tok.to_tiktoken().encode(text, allowed_special="all")
    assert tok.special_tokens["<|a\ufffdb|>"] in tok.encode(text, allowed_special="all")


def test_token_bytes_accepts_numpy_and_torch_ints(tok):
    import numpy as np
    import torch

    assert tok.token_bytes(np.int64(104)) == tok.token_bytes(torch.tensor(104)) == b"h"
    assert tok.token_bytes(np.int32(tok.special_tokens["<|endoftext|>"])) == b"<|endoftext|>"
    with pytest.raises(ValueError, match="int"):
        tok.token_bytes(1.0)


@pytest.mark.parametrize("pattern", [r"\s*", r"\p{L}+|$", r"\b|\p{L}+", r"(?=x)|x", r"a*", r"\p{L}+|(?:)"])
def test_a_pattern_that_matches_the_empty_string_is_refused(pattern):
    """tiktoken's encoder panics on an empty chunk ("range end index 2 out of range")."""
    with pytest.raises(ValueError, match="empty string"):
        BPETokenizer([], pattern=pattern)


def test_count_pretokens_refuses_a_single_str_of_special_tokens():
    """Regression: special_tokens="<|e|>" cut out every "<", "|", "e", ">" of the text, silently (train refuses it)."""
    from mlcore.tokenizer import count_pretokens

    assert count_pretokens("a<|e|>b e", special_tokens=["<|e|>"]) == {b"a": 1, b"b": 1, b" e": 1}
    with pytest.raises(ValueError, match=r"single str: use \['<\|e\|>'\]"):
        count_pretokens("a<|e|>b e", special_tokens="<|e|>")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: BPETokenizer(None), "merges must be"),
        (lambda: BPETokenizer([((97, 98), 256), (1, 2, 3)]), r"merges\[1\] must be \(\(a, b\), id\), got \(1, 2, 3\)"),
        (lambda: BPETokenizer([1, 2]), r"merges\[0\] must be"),
        (lambda: BPETokenizer([], special_tokens=["<s>"]), "special_tokens must be a dict"),
        (lambda: BPETokenizer.train("ab ab", 257, special_tokens=5), "special_tokens must be a list"),
        (lambda: BPETokenizer.train("ab ab", 257, trainer=["fast"]), "trainer must be one of"),
        (lambda: __import__("mlcore.tokenizer").tokenizer.split_text(None), "text must be a str"),
        (lambda: __import__("mlcore.tokenizer").tokenizer.count_pretokens(b"ab"), "text must be a str"),
    ],
)
def test_malformed_arguments_name_the_argument(call, message):
    """Regression: these failed deep inside with unpacking / dict() / hashing errors that named no argument."""
    with pytest.raises(ValueError, match=message):
        call()


def test_split_pattern_with_a_lone_surrogate_is_refused(tmp_path):
    """Regression: a pattern holding a lone surrogate was accepted (by train, the constructor and load), then
    to_tiktoken and save_hf failed with UnicodeEncodeError: tiktoken takes the pattern as UTF-8, which it is not."""
    import re

    import tiktoken

    pattern = "\ud800|\\S+|\\s+"
    with pytest.raises(UnicodeEncodeError):  # the reference cannot take it at all
        tiktoken.Encoding("x", pat_str=pattern, mergeable_ranks={bytes([i]): i for i in range(256)}, special_tokens={})
    with pytest.raises(ValueError, match=r"pattern .* '\\ud800' at position 0 is a lone surrogate"):
        BPETokenizer([], pattern=pattern)
    with pytest.raises(ValueError, match="lone surrogate"):
        BPETokenizer.train("ab ab", 257, pattern=pattern)
    path = tmp_path / "tok.bpe"
    BPETokenizer([], pattern="\\S+|\\s+").save(path)
    path.write_text(path.read_text(encoding="utf-8").replace('"\\\\S+', '"\\ud800|\\\\S+'), encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*lone surrogate"):
        BPETokenizer.load(path)


def test_deeply_nested_json_in_a_saved_file_is_a_value_error(tmp_path):
    """Regression: a hand-edited special-token line nested 100 000 deep gave a bare RecursionError from json."""
    import re

    path = tmp_path / "tok.bpe"
    BPETokenizer([], special_tokens={"<s>": 256}).save(path)
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace('256 "<s>"', "256 " + "[" * 100_000 + "]" * 100_000), encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": corrupt tokenizer file at line 4"):
        BPETokenizer.load(path)


def test_vocab_size_as_a_numpy_integer_like_hf_bpe_trainer():
    """Regression: train(text, np.int64(260)) was refused ("must be an int"); HF's BpeTrainer takes it."""
    import numpy as np
    from tokenizers import trainers

    assert trainers.BpeTrainer(vocab_size=np.int64(260)).vocab_size == 260
    text = "hello world " * 5
    t = BPETokenizer.train(text, np.int64(260), special_tokens=["<s>"])
    assert list(t.merges.items()) == list(BPETokenizer.train(text, 260, special_tokens=["<s>"]).merges.items())
    assert t.special_tokens == {"<s>": 259} and type(t.special_tokens["<s>"]) is int
    for bad in (np.float64(260), True, 260.0):
        with pytest.raises(ValueError, match="vocab_size must be an int"):
            BPETokenizer.train(text, bad)


def test_save_load_save_is_bit_identical_with_awkward_special_tokens(tmp_path):
    """Special tokens holding characters that str.splitlines treats as line ends (\\x1c, \\x85, \\u2028), quotes and
    backslashes survive the text format, and a reloaded tokenizer saves the very same bytes."""
    specials = {"<\n>": 259, "\x1c\x85\u2028": 260, '"\\': 261, "\ufeff": 262}
    tok = BPETokenizer.train("hello world " * 5, 263, special_tokens=list(specials))
    first, second = tmp_path / "a.bpe", tmp_path / "b.bpe"
    tok.save(str(first))
    back = BPETokenizer.load(first)
    back.save(second)
    assert back.special_tokens == specials and list(back.merges.items()) == list(tok.merges.items())
    assert first.read_bytes() == second.read_bytes()
    text = "x<\n>y\x1c\x85\u2028\ufeff"
    assert back.encode(text, allowed_special="all") == tok.to_tiktoken().encode(text, allowed_special="all")


def test_special_token_ids_must_be_integers_like_tiktoken(tmp_path):
    """Regression: {"<s>": 256.0} passed the id check (256.0 == 256), then encode returned the float id 256.0 and save
    wrote "256.0", a file load refuses; tiktoken refuses a float id. A bool (True == 1) was taken in merges as id 1.
    NumPy ids, which tiktoken takes, become Python ints (the HF export's JSON failed on np.int64)."""
    import json

    import numpy as np
    import tiktoken

    ranks = {bytes([i]): i for i in range(256)}
    with pytest.raises(TypeError):
        tiktoken.Encoding("x", pat_str=r"\S+|\s+", mergeable_ranks=ranks, special_tokens={"<s>": 256.0})
    for bad in (256.0, True):
        with pytest.raises(ValueError, match=r"special_tokens\['<s>'\] must be an int id"):
            BPETokenizer([], special_tokens={"<s>": bad})
    with pytest.raises(ValueError, match=r"merges\[0\] must be ints"):
        BPETokenizer([((True, 98), 256)])

    enc = tiktoken.Encoding("x", pat_str=r"\S+|\s+", mergeable_ranks=ranks, special_tokens={"<s>": np.int64(256)})
    tok = BPETokenizer([((np.int64(97), 98), np.int64(256))], special_tokens={"<s>": np.int64(257)})
    assert tok.encode("<s>", allowed_special="all") == [257] and enc.encode("<s>", allowed_special="all") == [256]
    assert all(type(i) is int for i in tok.encode("ab<s>", allowed_special="all"))
    assert json.loads(tok.to_hf_json())["added_tokens"][0]["id"] == 257
    path = tmp_path / "tok.bpe"
    tok.save(path)
    assert BPETokenizer.load(path).special_tokens == {"<s>": 257}
    trained = BPETokenizer.train("ab ab", 258, special_tokens={"<s>": np.int64(257)})
    assert trained.special_tokens == {"<s>": 257}


def test_count_pretokens_checks_special_tokens_as_train_does():
    """Regression: special_tokens=[""] cut the text between every two characters (every pre-token one byte, silently),
    "\\ud800" was silently never cut out (the text is repaired first), [5] / [b"l"] gave a bare TypeError, and None
    (train's "no special tokens") a TypeError; train refuses the first ones by name."""
    from mlcore.tokenizer import count_pretokens

    assert count_pretokens("hello world", special_tokens=None) == count_pretokens("hello world") == {
        b"hello": 1, b" world": 1}
    for bad, message in (([""], "non-empty strings"), ([5], "non-empty strings, got int 5"),
                         ([b"l"], "non-empty strings"), (["\ud800"], "lone surrogate")):
        with pytest.raises(ValueError, match=message):
            count_pretokens("hello \ud800 world", special_tokens=bad)
        with pytest.raises(ValueError, match="special"):
            BPETokenizer.train("hello \ud800 world", 258, special_tokens=bad)


def test_split_text_names_a_pattern_of_the_wrong_type():
    """Regression: split_text("ab", None) failed with AttributeError ('NoneType' object has no attribute 'findall');
    a compiled pattern still works as is."""
    import regex

    from mlcore.tokenizer import split_text

    assert split_text("ab cd", regex.compile(r"\S+|\s+")) == ["ab", " ", "cd"]
    for bad in (None, 5, b"\\S+"):
        with pytest.raises(ValueError, match="pattern must be a non-empty regular expression string"):
            split_text("ab", bad)


def test_bpe_merge_and_the_trainers_name_a_str_where_bytes_are_expected(tok):
    """Regression: bpe_merge("hello", ranks) raised KeyError: 'h', train_fast({"ab": 3}, 257) a TypeError about list
    indices; both take UTF-8 bytes (what count_pretokens gives)."""
    from mlcore.tokenizer import bpe_merge, train_fast, train_naive

    assert bpe_merge(b"hello", tok.ranks) == tok.encode_ordinary("hello")
    with pytest.raises(ValueError, match="piece must be the pre-token's UTF-8 bytes, got str 'hello'"):
        bpe_merge("hello", tok.ranks)
    for trainer in (train_fast, train_naive):
        assert trainer({b"ab": 3}, 257) == [((97, 98), 256)]
        with pytest.raises(ValueError, match=r"word_counts keys must be pre-tokens as UTF-8 bytes .*got str 'ab'"):
            trainer({"ab": 3}, 257)
