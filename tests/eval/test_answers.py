"""Exact match / token-F1 with SQuAD normalisation, and token accuracy."""

import pytest
import torch

from mlcore.eval import exact_match, normalize_answer, token_accuracy, token_f1


def test_squad_normalisation():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("An apple, a pear and THE plum.") == "apple pear and plum"


def test_exact_match_and_f1_hand_computed():
    assert exact_match("the Paris", "Paris.") == 1.0
    assert exact_match("Paris, France", ["Lyon", "paris france"]) == 1.0
    assert exact_match("Paris", "Lyon") == 0.0
    # pred tokens [new, york, city], gold [new, york]: P = 2/3, R = 1, F1 = 0.8
    assert token_f1("New York City", "new york") == pytest.approx(0.8)
    # repeated tokens count as a multiset: pred [a1, a1, b] vs gold [a1, b, c]: common 2, P = R = 2/3
    assert token_f1("x x y", "x y z") == pytest.approx(2 / 3)
    assert token_f1("nothing shared", "else") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("the", "answer") == 0.0  # "the" normalises to empty
    assert token_f1("red car", ["blue car", "red car"]) == 1.0


def test_token_accuracy_against_direct_count():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=g)
    labels = logits.argmax(-1).clone()
    labels[0, :3] = (labels[0, :3] + 1) % 11  # 3 wrong
    labels[1, 0] = -100  # ignored
    assert token_accuracy(logits, labels) == pytest.approx(8 / 11)
    assert token_accuracy(logits.argmax(-1), labels) == pytest.approx(8 / 11)
    shifted = token_accuracy(logits, labels, shift=True)
    preds, lab = logits.argmax(-1)[:, :-1], labels[:, 1:]
    keep = lab != -100
    assert shifted == pytest.approx(float((preds[keep] == lab[keep]).float().mean()))


def test_bad_input():
    with pytest.raises(ValueError, match="gold"):
        exact_match("a", [])
    with pytest.raises(ValueError, match="str"):
        token_f1(3, "a")
    with pytest.raises(ValueError, match="must match"):
        token_accuracy(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="ignore_index"):
        token_accuracy(torch.zeros(1, 2, 5), torch.full((1, 2), -100))


def test_golds_that_normalise_to_nothing_are_dropped_as_in_squad_v2():
    # SQuAD v2's get_raw_scores keeps only golds whose normalised text is non-empty (else it scores against "")
    assert exact_match("", ["The", "Denver Broncos"]) == 0.0 and token_f1("", ["The", "Denver Broncos"]) == 0.0
    assert exact_match("the", ["a.", "Paris"]) == 0.0 and token_f1("the", ["a.", "Paris"]) == 0.0
    assert exact_match("", ["The"]) == 1.0 and token_f1("an", ["The", "a"]) == 1.0
