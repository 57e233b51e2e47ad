"""Synthetic streams with a known drift point, to demonstrate and test the monitor.

``intent_shift_stream`` draws card-issuer customer messages (``mlcore.finetune.intent_data``, synthetic:
our templates filled by Faker) with a balanced intent mix for ``n_before`` records, then a mix where
``shifted_intent`` takes ``share`` of the traffic (a fraud wave, say) for ``n_after`` records. Optionally a
``new_product`` name starts appearing in the shifted messages. Each record: ``text``, ``intent``, ``length``
(words) and ``mentions_product`` (0/1). Seeded by ``seed`` (``random.Random`` per call).
"""

from __future__ import annotations

import random
from typing import Any


def intent_shift_stream(n_before: int = 600, n_after: int = 600, *, shifted_intent: str = "fraud_report",
                        share: float = 0.5, new_product: str | None = None, product_rate: float = 0.3,
                        pool_size: int = 480, seed: int = 0) -> list[dict[str, Any]]:
    """A stream of ``n_before + n_after`` records whose intent mix changes at record ``n_before``."""
    from mlcore.finetune.intent_data import INTENTS, generate, template_split

    if shifted_intent not in INTENTS:
        raise ValueError(f"shifted_intent must be one of {INTENTS}, got {shifted_intent!r}")
    if not 0.0 <= share <= 1.0 or not 0.0 <= product_rate <= 1.0:
        raise ValueError(f"share and product_rate must lie in [0, 1], got {share} and {product_rate}")
    for name, n in (("n_before", n_before), ("n_after", n_after)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{name} must be an int >= 0, got {n!r}")
    train_templates, _ = template_split()
    pool: dict[str, list[str]] = {i: [] for i in INTENTS}
    for ex in generate(max(pool_size, len(INTENTS)), train_templates, seed=seed):
        pool[ex.intent].append(ex.text)
    rng = random.Random(seed)
    others = [i for i in INTENTS if i != shifted_intent]
    out = []
    for t in range(n_before + n_after):
        shifted = t >= n_before
        if shifted and rng.random() < share:
            intent = shifted_intent
        else:
            intent = rng.choice(INTENTS if not shifted else others)
        text = rng.choice(pool[intent])
        product = shifted and new_product is not None and rng.random() < product_rate
        if product:
            text = f"{text} It is about my new {new_product}."
        out.append({"text": text, "intent": intent, "length": len(text.split()), "mentions_product": int(product)})
    return out
