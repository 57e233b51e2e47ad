"""Payment card numbers (PANs): brand by IIN prefix and length, printed groups, Luhn check.

ISO/IEC 7812 numbers start with an Issuer Identification Number; the brand fixes the prefix ranges and the
allowed lengths (table below, from the card networks' published IIN ranges). A candidate is a run of digit
groups separated by single spaces or dashes. Inside a run, windows of consecutive groups are tried, so
"415-555-2671 4111111111111111" still yields the card, while a 20-digit undelimited run (an order number)
yields nothing (digits never split inside a group) and neither does a grouped run that goes on with the
same separator ("4111 1111 1111 1111 2024" is read as one 20-digit number, not a card and a year; an
expiry date "4111 1111 1111 1111 12/27" does not continue it). A window is accepted when

1. it is not glued to letters, to more digits, or to a decimal point (``3.4111...``, ``ORD4111...``), and
   no 4-character token continues its grouping (``USPS 9400 1000 ... 00``, an IBAN's digit groups);
2. its separators are consistent and its groups are a printed layout: one block, groups of four (the last
   one shorter), or 4-6-5 / 4-6-4 (Amex / Diners);
3. its prefix and length belong to a brand;
4. it passes Luhn.

Scores: 0.9 for a valid number, +0.1 with a context word ("card", "visa", ...), -0.5 after "order" etc.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from mlcore.privacy.checksums import luhn_valid
from mlcore.privacy.context import score_with_context
from mlcore.privacy.spans import PiiSpan


@dataclass(frozen=True)
class CardBrand:
    """A card network: IIN prefix ranges (inclusive, compared on equal-length prefixes) and lengths."""

    name: str
    ranges: tuple[tuple[int, int], ...]
    lengths: tuple[int, ...]


# Order matters: more specific ranges first (Discover's 622126-622925 sits inside UnionPay's 62).
BRANDS: tuple[CardBrand, ...] = (
    CardBrand("amex", ((34, 34), (37, 37)), (15,)),
    CardBrand("visa", ((4, 4),), (13, 16, 19)),
    CardBrand("mastercard", ((51, 55), (2221, 2720)), (16,)),
    CardBrand("discover", ((6011, 6011), (644, 649), (65, 65), (622126, 622925)), (16, 17, 18, 19)),
    CardBrand("jcb", ((3528, 3589),), (16, 17, 18, 19)),
    CardBrand("jcb", ((1800, 1800), (2131, 2131)), (15,)),
    CardBrand("diners", ((300, 305), (309, 309), (36, 36), (38, 39)), (14, 16, 17, 18, 19)),
    CardBrand("unionpay", ((62, 62), (81, 81)), (16, 17, 18, 19)),
)


def card_brand(digits: str) -> str | None:
    """Brand name of a bare digit string by IIN prefix and length, or None."""
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
    return digits.isdigit() and card_brand(digits) is not None and luhn_valid(digits)


_RUN = re.compile(r"\d+(?:[ -]\d+)*")
_GROUP = re.compile(r"\d+")


def _layout_ok(sizes: list[int]) -> bool:
    if len(sizes) == 1:
        return True
    if sizes in ([4, 6, 5], [4, 6, 4]):
        return True
    return all(s == 4 for s in sizes[:-1]) and 1 <= sizes[-1] <= 4


def _glued(text: str, start: int, end: int) -> bool:
    """Is text[start:end] part of a longer token (letters, digits, decimals, identifiers)?"""
    before = text[start - 1] if start > 0 else ""
    after = text[end] if end < len(text) else ""
    if before.isalnum() or before == "_" or after.isalnum() or after == "_":
        return True
    if before == "." and start > 1 and text[start - 2].isdigit():
        return True  # the fractional part of a decimal (a comma is left alone: CSV rows are full of cards)
    if after == "." and end + 1 < len(text) and text[end + 1].isdigit():
        return True
    if before == "-" and start > 1 and text[start - 2].isalnum():
        return True  # an identifier such as ORD-4111111111111111
    if after == "-" and end + 1 < len(text) and text[end + 1].isalnum():
        return True
    return False


def _continues_layout(text: str, start: int, end: int, sep: str) -> bool:
    """Does a token with digits sit next to the window across the window's own separator (a longer grouped
    run: a USPS tracking number, an IBAN's digit groups, a 19-digit number whose first 16 pass Luhn)?"""
    if not sep:
        return False
    if start > 1 and text[start - 1] == sep:
        k = start - 1
        while k > 0 and text[k - 1].isalnum():
            k -= 1
        if any(c.isdigit() for c in text[k : start - 1]):
            return True
    if end + 1 < len(text) and text[end] == sep:
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
                total += groups[j][1] - groups[j][0]
                if total > 19:
                    break
                if total < 13:
                    continue
                start, end = groups[i][0], groups[j][1]
                seps = {text[groups[k][1]] for k in range(i, j)}
                if len(seps) > 1:
                    break
                if not _layout_ok([b - a for a, b in groups[i : j + 1]]):
                    continue
                sep = next(iter(seps), "")
                if _glued(text, start, end) or _continues_layout(text, start, end, sep):
                    continue
                digits = "".join(text[a:b] for a, b in groups[i : j + 1])
                if is_valid_card(digits):
                    score = score_with_context(text, start, "CARD", 0.9)
                    yield PiiSpan("CARD", start, end, text[start:end], score)
