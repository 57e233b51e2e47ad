"""Output drift: lengths, refusal rate and guardrail hits (through mlcore.privacy.scan_output)."""

import pytest

from mlcore.eval import is_refusal, output_drift, output_stats

CARD = "4111 1111 1111 1111"  # Luhn-valid test number


def test_refusals_and_guardrail_hits_counted():
    assert is_refusal("I'm sorry, I can't help with that.") and is_refusal("As an AI I cannot share that")
    assert not is_refusal("Your payment is due on the 5th.")
    texts = ["Your payment is due on the 5th.", "I'm sorry, I cannot share that.", f"The card is {CARD}.",
             "Sure."]
    s = output_stats(texts)
    assert s.n == 4 and s.lengths == (7, 6, 7, 1) and s.mean_length == pytest.approx(21 / 4)
    assert s.refusal_rate == pytest.approx(0.25) and s.guardrail_hit_rate == pytest.approx(0.25)


def test_drift_deltas():
    ref = ["The balance is 40 dollars today."] * 20
    cur = ["I am unable to help with that request, sorry."] * 10 + [f"Card {CARD} is active."] * 10
    d = output_drift(ref, cur)
    assert d["refusal_rate_delta"] == pytest.approx(0.5)
    assert d["guardrail_hit_rate_delta"] == pytest.approx(0.5)
    assert d["mean_length_delta"] == pytest.approx((10 * 9 + 10 * 7) / 20 - 6)
    assert d["length_psi"] > 1.0


def test_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        output_stats([])
    with pytest.raises(ValueError, match="single str"):
        output_stats("one text")
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        output_stats(["ok", None])
