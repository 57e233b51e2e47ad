"""The synthetic intent dataset: seeded, balanced, slots filled by Faker, and a test split whose templates the
train split never saw."""

import random
import re
from collections import Counter

import pytest

from mlcore.finetune.intent_data import INTENTS, make_intent_dataset, template_split
from mlcore.finetune.intent_templates import TEMPLATES


@pytest.fixture(scope="module")
def splits():
    return make_intent_dataset(240, 120, seed=3)


def test_covers_the_card_issuer_intents(splits):
    for intent in ("card_lost_stolen", "dispute_charge", "payment_due_date", "fraud_report", "limit_increase",
                   "address_change"):
        assert intent in INTENTS
    assert len(INTENTS) >= 10
    for split, n in ((splits.train, 240), (splits.test, 120)):
        counts = Counter(e.intent for e in split)
        assert len(split) == n and set(counts) == set(INTENTS)
        assert max(counts.values()) - min(counts.values()) <= 1
        assert all(splits.intents[e.label] == e.intent for e in split)


def test_heldout_templates_never_appear_in_training(splits):
    train_templates = {e.template for e in splits.train}
    test_templates = {e.template for e in splits.test}
    assert not train_templates & test_templates
    train_idx, test_idx = template_split(3)
    for intent in INTENTS:
        assert not set(train_idx[intent]) & set(test_idx[intent])
        assert len(test_idx[intent]) == 3 and len(train_idx[intent]) == len(TEMPLATES[intent]) - 3
    assert {e.template for e in splits.test} <= {f"{i}/{t}" for i in INTENTS for t in test_idx[i]}
    assert not set(splits.texts(splits.train)) & set(splits.texts(splits.test))


def test_slots_are_filled_with_varied_faker_values(splits):
    texts = splits.texts(splits.train) + splits.texts(splits.test)
    assert not any("{" in t or "}" in t for t in texts)
    amounts = [m for t in texts for m in re.findall(r"\$[\d,]+(?:\.\d\d)?", t)]
    assert len(amounts) > 20 and len(set(amounts)) > 0.8 * len(amounts)
    assert len(set(texts)) > 0.95 * len(texts)  # paraphrase moves and values make near-duplicates rare
    openers = Counter(t.split()[0].strip(",!.:").lower() for t in texts)
    assert {"hi", "hello", "dear"} <= set(openers)


def test_seeded_and_free_of_global_state():
    state = random.getstate()
    a, b = make_intent_dataset(48, 24, seed=1), make_intent_dataset(48, 24, seed=1)
    assert random.getstate() == state
    assert a.train == b.train and a.test == b.test
    assert make_intent_dataset(48, 24, seed=2).train != a.train


def test_bad_input():
    with pytest.raises(ValueError, match="n must be an int >= 12"):
        make_intent_dataset(5, 24)
    with pytest.raises(ValueError, match="heldout_templates must be in"):
        make_intent_dataset(48, 24, heldout_templates=0)
    with pytest.raises(ValueError, match="heldout_templates must be in"):
        make_intent_dataset(48, 24, heldout_templates=9)
