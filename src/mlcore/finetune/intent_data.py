"""A synthetic intent-classification dataset for a card issuer: customer messages labelled by what they want
(card lost or stolen, dispute a charge, payment due date, fraud report, limit increase, address change, ...).

**Synthetic data, written by us.** No message comes from a real customer: each one is one of our templates
(``intent_templates.py``) with its slots filled by Faker (names, amounts, merchants, dates, cities, addresses)
and varied by seeded paraphrase moves: an opener and a closer ("Hi,", "Thanks."), different names for the card
("credit card", "Visa card", "cc"), contractions, lower case, a dropped final full stop.

Held-out templates. Every intent has ``len(TEMPLATES[intent])`` templates; the last ``heldout_templates`` of
them are used only by the test split, the others only by the train split. A classifier scores well on the
test split only if it learned the intent, not our wording, which is the question that matters before a model
meets real customers. The test split also draws its Faker values from a different seed.

Everything is a pure function of ``seed``: ``Faker(); fake.seed_instance(seed)`` and ``random.Random(seed)``
per call, no global RNG is touched.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

from mlcore.finetune.intent_templates import CARD_NAMES, CLOSERS, OPENERS, TEMPLATES

INTENTS: tuple[str, ...] = tuple(TEMPLATES)
DATE_FORMATS = ("%B %d", "%m/%d", "%d %b", "%A", "%b %d, %Y")
CONTRACTIONS = (("I am ", "I'm "), ("do not ", "don't "), ("did not ", "didn't "), ("cannot ", "can't "),
                ("I would ", "I'd "), ("I will ", "I'll "), ("What is ", "What's "))


@dataclass(frozen=True)
class IntentExample:
    """One message: its ``text``, ``label`` (index into ``INTENTS``), ``intent`` name and ``template`` id."""

    text: str
    label: int
    intent: str
    template: str


@dataclass
class IntentSplits:
    """The train and held-out test splits; ``intents[label]`` names a label."""

    train: list[IntentExample]
    test: list[IntentExample]
    intents: tuple[str, ...] = field(default=INTENTS)

    @staticmethod
    def texts(split: Sequence[IntentExample]) -> list[str]:
        return [e.text for e in split]

    @staticmethod
    def labels(split: Sequence[IntentExample]) -> list[int]:
        return [e.label for e in split]


def template_split(heldout_templates: int = 3) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """``(train, test)``: for each intent, the indices of its templates in each split (disjoint)."""
    train, test = {}, {}
    for intent, templates in TEMPLATES.items():
        if not 1 <= heldout_templates < len(templates):
            raise ValueError(f"heldout_templates must be in [1, {len(templates) - 1}] (intent {intent!r} has "
                             f"{len(templates)} templates), got {heldout_templates!r}")
        train[intent] = list(range(len(templates) - heldout_templates))
        test[intent] = list(range(len(templates) - heldout_templates, len(templates)))
    return train, test


def _slots(fake, rng: random.Random) -> dict[str, str]:
    """Faker values for every slot a template may use."""
    when = fake.date_between_dates(date(2024, 1, 1), date(2025, 6, 30))
    return {
        "name": fake.name(),
        "amount": f"${rng.choice([rng.randint(3, 99), rng.randint(100, 999), rng.randint(1000, 4999)])}"
                  f".{rng.randint(0, 99):02d}",
        "merchant": rng.choice([fake.company(), fake.company().split()[0], fake.last_name() + "'s"]),
        "date": when.strftime(rng.choice(DATE_FORMATS)),
        "last4": f"{rng.randint(0, 9999):04d}",
        "city": fake.city(),
        "address": fake.street_address(),
        "country": fake.country(),
        "points": f"{rng.randint(5, 900) * 100:,}",
        "limit": f"${rng.randint(20, 300) * 100:,}",
        "card": rng.choice(CARD_NAMES),
    }


def _vary(text: str, rng: random.Random) -> str:
    """Seeded paraphrase moves: contractions, lower case, no final full stop."""
    if rng.random() < 0.5:
        for full, short in CONTRACTIONS:
            text = text.replace(full, short)
    if rng.random() < 0.15:
        text = text.lower()
    if rng.random() < 0.15 and text.endswith("."):
        text = text[:-1]
    return text


def render_message(intent: str, template_index: int, fake, rng: random.Random) -> str:
    """One message of ``intent`` from template ``template_index``, slots filled and varied."""
    values = _slots(fake, rng)
    body = TEMPLATES[intent][template_index].format(**values)
    opener = rng.choice(OPENERS).format(**values)
    if opener.rstrip().endswith((",", "-", ":")) and not body.startswith(("I ", "I'")):
        body = body[0].lower() + body[1:]  # "Hi, please ..." rather than "Hi, Please ..."
    return _vary(opener + body + rng.choice(CLOSERS).format(**values), rng)


def generate(n: int, templates: dict[str, list[int]], *, seed: int) -> list[IntentExample]:
    """``n`` messages, intents balanced (the first ``n % len(INTENTS)`` intents get one more), each from a
    random template of its intent among ``templates[intent]``, in a seeded shuffled order."""
    from faker import Faker

    if isinstance(n, bool) or not isinstance(n, int) or n < len(INTENTS):
        raise ValueError(f"n must be an int >= {len(INTENTS)} (one message per intent), got {n!r}")
    fake = Faker()
    fake.seed_instance(seed)
    rng = random.Random(seed)
    out = []
    for label, intent in enumerate(INTENTS):
        for _ in range(n // len(INTENTS) + (label < n % len(INTENTS))):
            t = rng.choice(templates[intent])
            out.append(IntentExample(render_message(intent, t, fake, rng), label, intent, f"{intent}/{t}"))
    rng.shuffle(out)
    return out


def make_intent_dataset(n_train: int = 1200, n_test: int = 600, *, seed: int = 0,
                        heldout_templates: int = 3) -> IntentSplits:
    """Train and held-out test splits of synthetic card-issuer messages (module docstring).

    The test split uses only templates the train split never saw, and Faker values from seed ``seed + 1``.
    """
    train_t, test_t = template_split(heldout_templates)
    return IntentSplits(generate(n_train, train_t, seed=seed), generate(n_test, test_t, seed=seed + 1))
