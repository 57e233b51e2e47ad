"""The card's other secrets, and cards with OCR slips.

- CVV2 / CVC2 / CID (3-4 digits; PCI DSS forbids storing it at all) and the expiry date after their own words
  ("CVV: 737", "exp 03/29", "valid thru 12/27"); printed right after a card number they are found by
  `cards.find_cards` itself.
- OCR and retyping slips put letters into numbers (O or o for 0, l or I for 1, S for 5). Near a card word, a
  run of digits and such letters (at least eight real digits) is read with the letters mapped back, and a card
  found so scores at most 0.7.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from mlcore.privacy.recognizers.cards import SEP_CLASS, find_cards
from mlcore.privacy.recognizers.context import CONTEXT_WORDS, keyword_regions
from mlcore.privacy.spans import PiiSpan

_CVV = re.compile(r"(?i:\b(?:cvv2?|cvc2?|cid|csc|security code|card verification(?: value| code)?))"
                  r"[ \t]*(?i:code|no\.?|number|#)?[ \t]*[:=#-]?[ \t]*([0-9]{3,4})(?![\w])")
_EXPIRY = re.compile(r"(?i:\b(?:exp(?:iry|ires|iration)?(?: date)?|valid (?:thru|through|until)|good thru))\.?"
                     r"[ \t]*[:=]?[ \t]*((?:0[1-9]|1[0-2]) ?[/-] ?(?:20[0-9]{2}|[0-9]{2}))(?![\w/])")
_CVV_WORDS = ("cvv", "cvv2", "cvc", "cvc2", "cid", "csc", "security code", "card verification")
_EXPIRY_WORDS = ("exp", "expiry", "expires", "expiration", "valid thru", "valid through", "valid until", "good thru")


def find_card_details(text: str) -> Iterator[PiiSpan]:
    """CVV / CVC codes and expiry dates after their own words ("CVV: 737", "exp 03/29", "valid thru 12/27")."""
    for lo, hi in keyword_regions(text, _CVV_WORDS):
        for m in _CVV.finditer(text, lo, hi):
            yield PiiSpan("CARD_CVV", m.start(1), m.end(1), m.group(1), 0.9)
    for lo, hi in keyword_regions(text, _EXPIRY_WORDS):
        for m in _EXPIRY.finditer(text, lo, hi):
            yield PiiSpan("CARD_EXPIRY", m.start(1), m.end(1), m.group(1), 0.85)


# OCR and retyping slips put letters into numbers: O or o for 0, l or I for 1, S for 5. Near a card word,
# a run of digits and such letters (at least eight real digits) is read with the letters mapped back, and a
# card found so scores at most 0.7.
_OCR_TABLE = str.maketrans("OolIS", "00115")
_OCR_SLIP = re.compile("[0-9][OolIS]|[OolIS][0-9]")
_OCR_RUN = re.compile("[0-9OolIS](?:[0-9OolIS]|(?:" + SEP_CLASS + "|  )(?=[0-9OolIS])){11,}")


def find_ocr_cards(text: str) -> Iterator[PiiSpan]:
    """Cards with OCR-like letter slips ("4l11 1111 1111 1lll"), only after a card word."""
    for lo, hi in keyword_regions(text, CONTEXT_WORDS["CARD"], reach=48):
        if _OCR_SLIP.search(text, lo, hi) is None:
            continue  # no letter touches a digit here: nothing to repair
        for m in _OCR_RUN.finditer(text, lo, hi):
            run = m.group()
            if run.isdigit() or sum(c.isdigit() for c in run) < 8 or not run[0].isdigit() and not run[-1].isdigit():
                continue
            left = max(0, m.start() - 48)
            local = text[left : m.start()] + run.translate(_OCR_TABLE) + text[m.end() : m.end() + 4]
            for span in find_cards(local):
                if span.kind == "CARD" and span.start + left >= m.start() and span.end + left <= m.end():
                    s, e = span.start + left, span.end + left
                    yield PiiSpan("CARD", s, e, text[s:e], min(span.score, 0.7))
