"""Special tokens: ``allowed_special`` / ``disallowed_special`` behave exactly as tiktoken's Encoding."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .bpe_strategies import SPECIALS

CASES = [
    ("plain text", {}),
    ("a<|endoftext|>b", {}),
    ("a<|endoftext|>b", {"allowed_special": "all"}),
    ("a<|endoftext|>b", {"allowed_special": {"<|endoftext|>"}}),
    ("a<|endoftext|>b<|im_start|>", {"allowed_special": {"<|endoftext|>"}}),
    ("a<|endoftext|>b<|im_start|>", {"allowed_special": {"<|endoftext|>"}, "disallowed_special": ()}),
    ("a<|endoftext|>b", {"disallowed_special": ()}),
    ("<|im_start|>user\nhi<|im_end|>", {"allowed_special": {"<|im_start|>", "<|im_end|>"}}),
    ("x<|im_end|>", {"allowed_special": {"<|im_start|>"}, "disallowed_special": {"<|im_end|>"}}),
    ("x<|im_end|>", {"allowed_special": {"<|im_start|>"}, "disallowed_special": {"<|im_start|>"}}),
    ("<|endoftext|><|endoftext|>", {"allowed_special": "all"}),
    ("<|endoftext", {}),
    ("hi", {"allowed_special": {"<|not_a_special|>"}}),
]


def _outcome(fn, text, kwargs):
    try:
        return fn(text, **kwargs)
    except ValueError:
        return "ValueError"


@pytest.mark.parametrize(("text", "kwargs"), CASES)
def test_same_as_tiktoken(tok, text, kwargs):
    assert _outcome(tok.encode, text, kwargs) == _outcome(tok.to_tiktoken().encode, text, kwargs)


def test_disallowed_special_raises_with_a_hint(tok):
    with pytest.raises(ValueError, match="allowed_special"):
        tok.encode("end <|endoftext|>")


def test_allowed_special_maps_to_its_id(tok):
    ids = tok.encode("<|im_start|>user\nhello<|im_end|>", allowed_special="all")
    assert ids[0] == tok.special_tokens["<|im_start|>"] and ids[-1] == tok.special_tokens["<|im_end|>"]
    assert tok.decode(ids) == "<|im_start|>user\nhello<|im_end|>"
    assert tok.special_tokens["<|endoftext|>"] == tok.vocab_size - 3


pieces = st.lists(st.sampled_from([*SPECIALS, "<|", "|>", "a", " ", "\n", "end", "é"]), max_size=12)


@settings(max_examples=40, deadline=None)
@given(pieces.map("".join), st.sampled_from(["all", set(), {"<|im_end|>"}, set(SPECIALS[:2])]))
def test_random_mixtures_same_as_tiktoken(tok, text, allowed):
    for kwargs in ({"allowed_special": allowed}, {"allowed_special": allowed, "disallowed_special": ()}):
        assert _outcome(tok.encode, text, kwargs) == _outcome(tok.to_tiktoken().encode, text, kwargs)
