"""Sixth audit of the tokenizer: the ``save_pretrained`` folder through ``transformers.AutoTokenizer`` (special-token
bookkeeping, special tokens in every position), and decoding of partial UTF-8 against tiktoken's ``decode``
(``errors=``) and Hugging Face's decoder."""

import itertools
import json
import random

import pytest

from mlcore.tokenizer import BPETokenizer

transformers = pytest.importorskip("transformers")

CHAT = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# prefixes, suffixes and repeats of one another, so "longest match at the leftmost place" is exercised
OVERLAPPING = ["<s>", "<s", "s>", "</s>", "<s><s>", "<pad>"]


@pytest.fixture(scope="module")
def overlapping(corpus):
    return BPETokenizer.train(corpus, 512 + len(OVERLAPPING), special_tokens=OVERLAPPING)


def _auto(tok, folder, **roles):
    tok.save_pretrained(folder, **roles)
    return transformers.AutoTokenizer.from_pretrained(str(folder))


def test_every_special_token_is_special_to_transformers(tok, tmp_path):
    """Regression: tokenizer_config.json named only the roles, so transformers' all_special_tokens held just the EOS
    token and get_special_tokens_mask (read by data collators) counted <|im_start|> / <|im_end|> as text."""
    auto = _auto(tok, tmp_path / "a", eos_token="<|endoftext|>")
    assert sorted(auto.all_special_tokens) == sorted(tok.special_tokens)
    assert sorted(auto.all_special_ids) == sorted(tok.special_tokens.values())
    text = "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>"
    ids = tok.encode(text, allowed_special="all")
    assert auto(text)["input_ids"] == ids  # the list changes nothing about encoding
    assert auto.get_special_tokens_mask(ids, already_has_special_tokens=True) == [
        int(i >= tok.num_ordinary) for i in ids]
    assert (auto.eos_token, auto.bos_token, auto.pad_token) == ("<|endoftext|>", None, None)
    config = json.loads((tmp_path / "a" / "tokenizer_config.json").read_text())
    assert config["additional_special_tokens"] == ["<|im_start|>", "<|im_end|>"]  # id order, roles left out
    auto.save_pretrained(tmp_path / "again")  # transformers' own re-save keeps them
    again = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "again"))
    assert sorted(again.all_special_ids) == sorted(tok.special_tokens.values())


def test_no_additional_list_when_every_special_token_has_a_role(tok, tmp_path):
    _auto(tok, tmp_path, eos_token="<|endoftext|>", bos_token="<|im_start|>", pad_token="<|im_end|>")
    assert "additional_special_tokens" not in json.loads((tmp_path / "tokenizer_config.json").read_text())


def test_overlapping_special_tokens_in_every_position_match_transformers(overlapping, tmp_path):
    """Every 3-sequence of special tokens, their prefixes, spaces and newlines: AutoTokenizer splits them out of the
    text as encode(allowed_special="all") does (longest at the leftmost place), and decodes back the same."""
    tok = overlapping
    auto = _auto(tok, tmp_path, eos_token="</s>", bos_token="<s>", pad_token="<pad>", model_max_length=8)
    atoms = list(dict.fromkeys([*OVERLAPPING, *(s[:-1] for s in OVERLAPPING), " ", "\n", "a", ""]))
    texts = ["".join(combo) for combo in itertools.product(atoms, repeat=3)]
    ours = [tok.encode(t, allowed_special="all") for t in texts]
    assert auto(texts)["input_ids"] == ours
    assert auto.batch_decode(ours) == texts
    plain = [tok.decode([i for i in ids if i < tok.num_ordinary]) for ids in ours]
    assert auto.batch_decode(ours, skip_special_tokens=True) == plain
    assert [auto(t, truncation=True)["input_ids"] for t in texts] == [ids[:8] for ids in ours]
    assert sorted(auto.all_special_ids) == sorted(tok.special_tokens.values())


def _random_ids(tok, rng, n):
    """Id sequences that split characters: mostly lone bytes (lead / continuation / invalid), some learned and
    special tokens."""
    return [[rng.randrange(256) if rng.random() < 0.7 else rng.randrange(tok.vocab_size)
             for _ in range(rng.randint(0, 8))] for _ in range(n)]


def test_partial_utf8_decodes_as_tiktoken_and_hf(tok, tmp_path):
    """Whole and one-id-at-a-time (streaming) decodes of ids that cut characters: U+FFFD exactly where tiktoken's
    decode and HF's ByteLevel decoder put them; decode_bytes equals tiktoken's."""
    enc, auto = tok.to_tiktoken(), _auto(tok, tmp_path, eos_token="<|endoftext|>")
    seqs = _random_ids(tok, random.Random(0), 2000)
    assert [tok.decode(s) for s in seqs] == [enc.decode(s) for s in seqs] == auto.batch_decode(seqs)
    assert [tok.decode_bytes(s) for s in seqs] == [enc.decode_bytes(s) for s in seqs]
    for s in seqs[:300]:
        assert [tok.decode([i]) for i in s] == [enc.decode([i]) for i in s] == [auto.decode([i]) for i in s]


@pytest.mark.parametrize("errors", ["replace", "strict", "ignore", "backslashreplace", "surrogateescape"])
def test_decode_takes_tiktokens_errors_argument(tok, errors):
    """Regression: decode(ids, errors=...) (tiktoken's Encoding.decode signature) was a TypeError."""
    enc = tok.to_tiktoken()
    for ids in _random_ids(tok, random.Random(1), 300):
        try:
            expected = enc.decode(ids, errors=errors)
        except UnicodeDecodeError:
            with pytest.raises(UnicodeDecodeError):
                tok.decode(ids, errors=errors)
        else:
            assert tok.decode(ids, errors=errors) == tok.decode(ids, errors) == expected


@pytest.mark.parametrize("errors", ["bogus", 5, None])
def test_decode_refuses_an_unknown_error_handler(tok, errors):
    """Python looks the handler up only at a bad byte, so "bogus" would pass silently on valid text."""
    with pytest.raises(ValueError, match="errors"):
        tok.decode(tok.encode("plain text"), errors=errors)
