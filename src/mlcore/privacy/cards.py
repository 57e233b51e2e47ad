"""Payment card numbers (PANs): brand by IIN prefix and length, printed groups, Luhn check.

ISO/IEC 7812 numbers start with an Issuer Identification Number; the brand fixes the prefix ranges and the
allowed lengths (table below, from the card networks' published IIN ranges). A candidate is a run of digit
groups separated by single spaces, dashes (also no-break spaces and Unicode dashes) or dots. Inside a run,
windows of consecutive groups are tried, so "415-555-2671 4111111111111111" still yields the card, while a
20-digit undelimited run (an order number) yields nothing (digits never split inside a group) and neither
does a grouped run that goes on with the same separator ("4111 1111 1111 1111 2024" is read as one 20-digit
number, not a card and a year; an expiry date "4111 1111 1111 1111 12/27" does not continue it). Digits in
other scripts (fullwidth, Arabic-Indic) are read as ASCII by `detect_pii` before recognizers run.
A window is accepted when

1. it is not part of a longer number or a decimal (``3.4111...``) or an identifier (``ORD4111...``,
   ``ORD-4111...``, ``0x4111...``), and no token continues its grouping (``USPS 9400 1000 ... 00``, an
   IBAN's digit groups); a plain word glued to it (``visa4111...``, ``4111...exp``) lowers the score to 0.6
   but does not hide it;
2. its groups are a printed layout: one block, groups of four (the last one shorter), or 4-6-5 / 4-6-4
   (Amex / Diners); spaces and dashes may mix, dots only with groups of four;
3. its prefix and length belong to a brand (Maestro outside its well-known IINs needs a context word);
4. it passes Luhn.

Scores: 0.9 for a valid number, +0.1 with a context word ("card", "visa", ...), -0.5 after "order", "id",
"EAN", "FedEx" etc. (a positive word wins).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from mlcore.privacy.checksums import luhn_valid
from mlcore.privacy.context import has_context, score_with_context
from mlcore.privacy.spans import PiiSpan


@dataclass(frozen=True)
class CardBrand:
    """A card network: IIN prefix ranges (inclusive, compared on equal-length prefixes) and lengths."""

    name: str
    ranges: tuple[tuple[int, int], ...]
    lengths: tuple[int, ...]


# Order matters: more specific ranges first (Discover's 622126-622925 sits inside UnionPay's 62).
# JCB's assigned block is 3528-3589, but test generators (Faker's "jcb"/"jcb16") draw from all of 35xx and
# nothing else issues there, so the whole 35 block is read as JCB. Maestro (50, 56-69; 12-19 digits) and
# Mir (2200-2204) come last: they only claim what no brand above does.
BRANDS: tuple[CardBrand, ...] = (
    CardBrand("amex", ((34, 34), (37, 37)), (15,)),
    CardBrand("visa", ((4, 4),), (13, 16, 19)),
    CardBrand("mastercard", ((51, 55), (2221, 2720)), (16,)),
    CardBrand("discover", ((6011, 6011), (644, 649), (65, 65), (622126, 622925)), (16, 17, 18, 19)),
    CardBrand("jcb", ((3528, 3589),), (16, 17, 18, 19)),
    CardBrand("jcb", ((3500, 3599),), (16,)),
    CardBrand("jcb", ((1800, 1800), (2131, 2131)), (15,)),
    CardBrand("diners", ((300, 305), (309, 309), (36, 36), (38, 39)), (14, 16, 17, 18, 19)),
    CardBrand("unionpay", ((62, 62), (81, 81)), (16, 17, 18, 19)),
    CardBrand("mir", ((2200, 2204),), (16, 17, 18, 19)),
    CardBrand("maestro", ((50, 50), (56, 69)), (12, 13, 14, 15, 16, 17, 18, 19)),
)

# Maestro's wide ranges (50, 56-69) would claim 15% of all 12-19 digit ids (one in ten passes Luhn), so a
# Maestro number is only read as a card with one of these well-known IINs or after a context word ("card").
_MAESTRO_IINS = ("5018", "5020", "5038", "5893", "6304", "6759", "6761", "6762", "6763", "0604", "6390")


def card_brand(digits: str) -> str | None:
    """Brand name of a bare digit string by IIN prefix and length, or None."""
    if not (digits.isascii() and digits.isdigit()):
        return None
    if digits.startswith("0604") and 12 <= len(digits) <= 19:
        return "maestro"  # the one IIN with a leading zero
    for brand in BRANDS:
        if len(digits) not in brand.lengths:
            continue
        for lo, hi in brand.ranges:
            width = len(str(lo))
            if lo <= int(digits[:width]) <= hi:
                return brand.name
    return None


def is_valid_card(digits: str) -> bool:
    """A known brand's prefix and length, and the Luhn check."""
    return digits.isascii() and digits.isdigit() and card_brand(digits) is not None and luhn_valid(digits)


# Separators between printed groups: space, dash, dot, and their typographic cousins (no-break and thin
# spaces, the Unicode hyphens and dashes) that copy-paste from web pages and PDFs brings along.
_SPACES = " \u00a0\u2007\u2009\u202f"
_DASHES = "-\u2010\u2011\u2012\u2013\u2014\u2212"
_SEP_CLASS = "[" + re.escape(_SPACES + _DASHES + ".") + "]"
_RUN = re.compile(r"\d+(?:" + _SEP_CLASS + r"\d+)*")


def _sep_class(ch: str) -> str:
    return " " if ch in _SPACES else "-" if ch in _DASHES else ch
_GROUP = re.compile(r"\d+")


def _layout_ok(sizes: list[int], seps: set[str]) -> bool:
    if len(sizes) == 1:
        return True
    if sizes in ([4, 6, 5], [4, 6, 4]):
        return True
    if "." in seps:  # dotted: only full groups of four (a decimal or a version string is not a card)
        return len(sizes) >= 3 and all(s == 4 for s in sizes[:-1]) and 2 <= sizes[-1] <= 4
    return all(s == 4 for s in sizes[:-1]) and 1 <= sizes[-1] <= 4


# Letters glued to a number that say "this is an identifier, not a card" (ORD4111..., INV-4111...).
_ID_PREFIXES = frozenset(
    ("ord", "order", "inv", "invoice", "po", "sku", "ref", "trk", "track", "tracking", "txn", "ticket", "serial",
     "sn", "tn", "id", "no", "nr", "tx", "req", "case", "acct", "account")
)


def _letters_before(text: str, end: int) -> str:
    k = end
    while k > 0 and (text[k - 1].isalpha() or text[k - 1] == "_"):
        k -= 1
    return text[k:end]


def _glued(text: str, start: int, end: int) -> str | None:
    """How text[start:end] is attached to its neighbours: None (free-standing), "letters" (a word glued to
    it, as in ``visa4111...`` or ``4111...exp``: still reported, with a lower score) or "token" (part of a
    longer number, a decimal, or an identifier such as ``ORD-4111...``: not a card)."""
    before = text[start - 1] if start > 0 else ""
    after = text[end] if end < len(text) else ""
    if before.isdigit() or after.isdigit():
        return "token"
    if before == "." and start > 1 and text[start - 2].isdigit():
        return "token"  # the fractional part of a decimal (a comma is left alone: CSV rows are full of cards)
    if after == "." and end + 1 < len(text) and text[end + 1].isdigit():
        return "token"
    glue = None
    if before in _DASHES and start > 1 and text[start - 2].isalnum():
        k = start - 1
        while k > 0 and text[k - 1].isalnum():
            k -= 1
        word = text[k : start - 1]
        if any(c.isdigit() for c in word) or word.lower() in _ID_PREFIXES:
            return "token"  # an identifier such as ORD-4111111111111111 or 2024-...
        glue = "letters"
    if after in _DASHES and end + 1 < len(text) and text[end + 1].isalnum():
        k = end + 1
        while k < len(text) and text[k].isalnum():
            k += 1
        if any(c.isdigit() for c in text[end + 1 : k]):
            return "token"
        glue = "letters"
    if before.isalpha() or before == "_":
        word = _letters_before(text, start)
        k = start - len(word)
        if word.lower().strip("_") in _ID_PREFIXES or (k > 0 and text[k - 1].isdigit()):
            return "token"  # ORD4111..., 0x4111... (hex), 1Z999AA1012... (a mixed identifier)
        glue = "letters"
    if after.isalpha() or after == "_":
        k = end
        while k < len(text) and (text[k].isalpha() or text[k] == "_"):
            k += 1
        if k < len(text) and text[k].isdigit():
            return "token"
        glue = "letters"
    return glue


def _continues_layout(text: str, start: int, end: int, seps: set[str]) -> bool:
    """Does a token with digits sit next to the window across one of the window's own separators (a longer
    grouped run: a USPS tracking number, an IBAN's digit groups, a 19-digit number whose first 16 pass Luhn)?"""
    if not seps:
        return False
    if start > 1 and _sep_class(text[start - 1]) in seps:
        k = start - 1
        while k > 0 and text[k - 1].isalnum():
            k -= 1
        if any(c.isdigit() for c in text[k : start - 1]):
            return True
    if end + 1 < len(text) and _sep_class(text[end]) in seps:
        k = end + 1
        while k < len(text) and text[k].isalnum():
            k += 1
        is_date = k + 1 < len(text) and text[k] in "/:" and text[k + 1].isdigit()  # "... 1111 12/27"
        if any(c.isdigit() for c in text[end + 1 : k]) and not is_date:
            return True
    return False


def find_cards(text: str) -> Iterator[PiiSpan]:
    """All card numbers in `text` (may overlap each other only in pathological runs)."""
    for run in _RUN.finditer(text):
        groups = [(m.start() + run.start(), m.end() + run.start()) for m in _GROUP.finditer(run.group())]
        n = len(groups)
        for i in range(n):
            total = 0
            for j in range(i, n):
                if j > i and groups[j - 1][1] - groups[j - 1][0] not in (4, 6):
                    break  # an inner group of a printed card has 4 (or Amex/Diners' 6) digits
                total += groups[j][1] - groups[j][0]
                if total > 19:
                    break
                if total < 12:
                    continue
                start, end = groups[i][0], groups[j][1]
                seps = {_sep_class(text[groups[k][1]]) for k in range(i, j)}
                if "." in seps and len(seps) > 1:
                    break  # dots never mix with other separators
                if not _layout_ok([b - a for a, b in groups[i : j + 1]], seps):
                    continue
                glue = _glued(text, start, end)
                if glue == "token" or _continues_layout(text, start, end, seps):
                    continue
                digits = "".join(text[a:b] for a, b in groups[i : j + 1])
                if not is_valid_card(digits):
                    continue
                base = 0.9 if glue is None else 0.6
                if card_brand(digits) == "maestro":
                    if not digits.startswith(_MAESTRO_IINS):
                        if not has_context(text, start, "CARD"):
                            continue
                    base -= 0.1
                score = score_with_context(text, start, "CARD", base)
                yield PiiSpan("CARD", start, end, text[start:end], score)
