"""The incremental trainer against the textbook one: the same merges, in the same order."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlcore.tokenizer import GPT4_PATTERN, BPETokenizer, count_pretokens, train_fast, train_naive


def test_fast_equals_naive_on_corpus(corpus):
    words = count_pretokens(corpus[:30_000])
    assert train_fast(words, 600) == train_naive(words, 600)


@settings(max_examples=30, deadline=None)
@given(st.text(st.sampled_from("aab c\n1é日👍"), min_size=1, max_size=80), st.integers(257, 300))
def test_fast_equals_naive_on_random_text(text, vocab_size):
    """Tiny alphabets make many ties and overlapping pairs ('aaaa'); both run out of pairs identically."""
    words = count_pretokens(text)
    try:
        naive = train_naive(words, vocab_size)
    except ValueError as exc:
        with pytest.raises(ValueError, match="merges were possible") as fast_exc:
            train_fast(words, vocab_size)
        assert str(fast_exc.value) == str(exc)
        return
    assert train_fast(words, vocab_size) == naive


def test_tie_breaking_rule_smallest_pair():
    """Pre-tokens 'ba', ' ab' hold (b,a), (' ',a), (a,b) once each: the tie goes to the smallest ids,
    (32, 97); then ' a'+'b' (count 1) ties with (b,a) and (256, 98) > (98, 97) loses."""
    for trainer in ("fast", "naive"):
        t = BPETokenizer.train("ba ab", 258, trainer=trainer)
        assert list(t.merges.items()) == [((32, 97), 256), ((98, 97), 257)]


def test_most_frequent_pair_first():
    """'hello', ' hello' x2, ' help': 'he' and 'el' occur 4 times, 'll', 'lo', ' h' 3 times; the tie goes to
    ('e', 'l') = (101, 108) < ('h', 'e') = (104, 101)."""
    for trainer in ("fast", "naive"):
        t = BPETokenizer.train("hello hello hello help", 258, trainer=trainer)
        assert [t.vocab[256], t.vocab[257]] == [b"el", b"hel"]


def test_merged_tokens_are_unique_and_ranked(tok):
    assert len(set(tok.vocab)) == len(tok.vocab)
    for (a, b), i in tok.merges.items():
        assert tok.vocab[i] == tok.vocab[a] + tok.vocab[b]
        assert a < i and b < i  # a merge only uses tokens learned before it


def test_special_tokens_are_not_learned():
    text = "<|endoftext|>" * 50 + " plain text"
    t = BPETokenizer.train(text, 260, special_tokens=["<|endoftext|>"])
    assert not any(b"<|" in v for v in t.vocab)
    assert t.special_tokens == {"<|endoftext|>": 259}


def test_learns_what_hf_bpe_trainer_learns(corpus):
    """HF tokenizers' BpeTrainer with the same pipeline (GPT-4 split + byte-level) is an independent
    trainer: the vocabularies agree except for a few tie-breaks, and so does compression."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    from mlcore.tokenizer.export import byte_level_string

    hf = Tokenizer(models.BPE(ignore_merges=True))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    hf.train_from_iterator([corpus], trainers.BpeTrainer(
        vocab_size=1024, min_frequency=0, show_progress=False, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    ours = BPETokenizer.train(corpus, 1024, special_tokens=["<|endoftext|>"])
    our_vocab = {byte_level_string(b) for b in ours.vocab} | set(ours.special_tokens)
    assert len(our_vocab ^ set(hf.get_vocab())) <= 2 * 10  # at most 10 of 1024 tokens differ
    ratio = len(hf.encode(corpus).ids) / len(ours.encode_ordinary(corpus))
    assert abs(ratio - 1) < 0.02, ratio
