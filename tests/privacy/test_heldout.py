"""The held-out evaluation set: built from registries' and issuers' rules, and what detect_pii scores on it."""

import random

import pytest

from mlcore.privacy import detect_pii
from mlcore.privacy.evaluation.evaluate import evaluate
from mlcore.privacy.evaluation.heldout import IBAN_BBAN, card_for, heldout_records, iban_for
from mlcore.privacy.evaluation.messages import DEV_TEMPLATES, HELDOUT_TEMPLATES
from mlcore.privacy.recognizers.banking import IBAN_LENGTHS, iban_valid
from mlcore.privacy.recognizers.checksums import luhn_valid


def test_bban_table_agrees_with_the_recognizer_length_table():
    # two tables written separately from the SWIFT registry: same countries, BBAN + 4 == IBAN length
    assert set(IBAN_BBAN) == set(IBAN_LENGTHS)
    rng = random.Random(0)
    for country in IBAN_BBAN:
        iban = iban_for(country, rng)
        assert len(iban) == IBAN_LENGTHS[country] and iban_valid(iban), country


def test_generated_cards_are_luhn_valid_and_records_are_seeded():
    rng = random.Random(1)
    assert all(luhn_valid(card_for(rng)) for _ in range(200))
    a, b = heldout_records(20, split="heldout"), heldout_records(20, split="heldout")
    assert [r.text for r in a] == [r.text for r in b]
    for rec in a:
        assert all(0 <= s < e <= len(rec.text) for _, s, e in rec.spans)
    assert not set(DEV_TEMPLATES) & set(HELDOUT_TEMPLATES)
    with pytest.raises(ValueError, match="split"):
        heldout_records(1, split="test")


def test_detection_quality_on_the_heldout_split():
    scores = evaluate(heldout_records(160, split="heldout", seed=5), detect_pii)
    for kind, s in scores.items():
        assert s.precision >= 0.95, (kind, s)
    for kind in ("IBAN", "SSN", "EMAIL", "ABA_ROUTING", "SECRET"):
        assert scores[kind].recall == 1.0, (kind, scores[kind])
    assert scores["CARD"].recall >= 0.93 and scores["PHONE"].recall >= 0.9
