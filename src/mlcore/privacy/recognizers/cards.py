"""Payment card numbers (PANs): brand by IIN prefix and length, printed groups, Luhn check; the CVV and
expiry printed with them.

ISO/IEC 7812 numbers start with an Issuer Identification Number; the brand fixes the prefix ranges and the
allowed lengths (table below, from the card networks' published IIN tables: Visa, Mastercard, Amex, Discover,
JCB, Diners, UnionPay, Maestro, Mir, UATP, Dankort, RuPay, Elo, Troy, Verve, BORICA, ...). A candidate is a
run of digit groups separated by one space, dash (also no-break spaces and Unicode dashes) or dot, by two
spaces, or by a line break (a wrapped number). Inside a run, windows of consecutive groups are tried, so
"415-555-2671 4111111111111111" and "ticket 123456 4111 1111 1111 1111" still yield the card, while a 20-digit
undelimited run (an order number) yields nothing (digits never split inside a group). Digits in other scripts
(fullwidth, Arabic-Indic) are read as ASCII by `detect_pii` before recognizers run; OCR slips (O for 0, l for 1)
are repaired after a card word (`find_ocr_cards`). A window is accepted when

1. it passes Luhn (tested first: it rejects nine windows in ten for a few operations);
2. its groups are a printed layout: one block, groups of four (the last one shorter), or 4-6-5 / 4-6-4
   (Amex / Diners); spaces and dashes may mix, dots only with groups of four;
3. it is not part of a longer number or a decimal (``3.4111...``) or an identifier (``ORD4111...``,
   ``ORD-4111...``, ``0x4111...``); a plain word glued to it (``visa4111...``) or a "+" (an E.164 phone
   number, ``+4915123454998``) lowers the score to 0.6;
4. its prefix and length belong to a brand (Maestro outside its well-known IINs needs a context word), or
   it falls under the unknown-IIN policy below.

Several cards on one line are all reported, whatever their layouts; same-layout cards back to back
("4111 1111 1111 1111 5555 5555 5555 4444") are reported when the run splits exactly into valid cards.

Scores: 0.9 for a valid number, +0.1 with a context word ("card", "visa", ...), -0.5 after "order", "ref",
"FedEx" etc. (a positive word wins). Policy for what is ambiguous: a Luhn-valid 13-19 digit run of an IIN no
network lists scores 0.7 after a card word (reported) and 0.4 otherwise; so does a window that a neighbouring
group of four could continue ("USPS 9400 1000 ..."). 0.4 is below `detect_pii`'s 0.5 (not *reported*) and
above `MASK_MIN_SCORE` = 0.35, so `mask_pii`, `scan_input` and `scan_output` still mask it: masking errs
toward hiding, since an unlisted network's card must not leak and a masked tracking number costs nothing.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate

from mlcore.privacy.recognizers.checksums import luhn_valid
from mlcore.privacy.recognizers.context import (
    ID_PREFIXES,
    has_context,
    letters_before,
    score_with_context,
)
from mlcore.privacy.spans import PiiSpan


@dataclass(frozen=True)
class CardBrand:
    """A card network: IIN prefix ranges (inclusive, compared on equal-length prefixes) and lengths."""

    name: str
    ranges: tuple[tuple[int, int], ...]
    lengths: tuple[int, ...]


# Order matters: more specific ranges first (Discover's 622126-622925 sits inside UnionPay's 62; Elo's and
# RuPay's ranges inside Discover's 65). Ranges follow the networks' published IIN tables. JCB's assigned
# block is 3528-3589, but test generators (Faker's "jcb"/"jcb16") draw from all of 35xx and nothing else
# issues there, so the whole 35 block is read as JCB. Maestro (50, 56-69; 12-19 digits) comes last: it only
# claims what no brand above does.
BRANDS: tuple[CardBrand, ...] = (
    CardBrand("amex", ((34, 34), (37, 37)), (15,)),
    CardBrand("uatp", ((1, 1),), (15,)),
    CardBrand("elo", ((401178, 401179), (431274, 431274), (438935, 438935), (451416, 451416), (457393, 457393),
                      (457631, 457632), (504175, 504175), (506699, 506778), (509000, 509999), (627780, 627780),
                      (636297, 636297), (636368, 636368), (650031, 650033), (650035, 650051), (650405, 650439),
                      (650485, 650538), (650541, 650598), (650700, 650718), (650720, 650727), (650901, 650978),
                      (651652, 651679), (655000, 655019), (655021, 655058)), (16,)),
    CardBrand("visa", ((4, 4),), (13, 16, 19)),
    CardBrand("dankort", ((5019, 5019),), (16,)),
    CardBrand("verve", ((506099, 506198), (650002, 650027), (507865, 507964)), (16, 18, 19)),
    CardBrand("mastercard", ((51, 55), (2221, 2720)), (16,)),
    CardBrand("discover", ((6011, 6011), (644, 649), (65, 65), (622126, 622925)), (16, 17, 18, 19)),
    CardBrand("jcb", ((3528, 3589),), (16, 17, 18, 19)),
    CardBrand("jcb", ((3500, 3599),), (16,)),
    CardBrand("jcb", ((1800, 1800), (2131, 2131)), (15,)),
    CardBrand("rupay", ((508, 508), (60, 60), (652, 653), (81, 82), (353, 353), (356, 356)), (16,)),
    CardBrand("diners", ((300, 305), (309, 309), (36, 36), (38, 39)), (14, 16, 17, 18, 19)),
    CardBrand("unionpay", ((62, 62), (81, 81)), (16, 17, 18, 19)),
    CardBrand("mir", ((2200, 2204),), (16, 17, 18, 19)),
    CardBrand("borica", ((2205, 2205),), (16,)),
    CardBrand("troy", ((9792, 9792), (65, 65)), (16,)),
    CardBrand("humo", ((9860, 9860),), (16,)),
    CardBrand("uzcard", ((8600, 8600),), (16,)),
    CardBrand("instapayment", ((637, 639),), (16,)),
    CardBrand("interpayment", ((636, 636),), (16, 17, 18, 19)),
    CardBrand("lankapay", ((357111, 357111),), (16,)),
    CardBrand("maestro", ((50, 50), (56, 69)), (12, 13, 14, 15, 16, 17, 18, 19)),
)

# Maestro's wide ranges (50, 56-69) would claim 15% of all 12-19 digit ids (one in ten passes Luhn), so a
# Maestro number is only read as a card with one of these well-known IINs or after a context word ("card").
_MAESTRO_IINS = ("5018", "5020", "5038", "5893", "6304", "6759", "6761", "6762", "6763", "0604", "6390")


def _brand_table() -> dict[int, tuple[list[int], list[str | None]]]:
    """Per length, BRANDS flattened into disjoint intervals of 6-digit prefixes (first listed brand wins), so
    a lookup is one bisection instead of a walk over every range."""
    table = {}
    for length in range(12, 20):
        spans = [(lo * 10 ** (6 - len(str(lo))), (hi + 1) * 10 ** (6 - len(str(lo))), b.name)
                 for b in BRANDS if length in b.lengths for lo, hi in b.ranges]
        cuts = sorted({0, 10**6, *(s for s, _, _ in spans), *(e for _, e, _ in spans)})
        starts, names = [], []
        for c in cuts[:-1]:
            starts.append(c)
            names.append(next((name for s, e, name in spans if s <= c < e), None))
        table[length] = (starts, names)
    return table


_BRAND_TABLE = _brand_table()


def card_brand(digits: str) -> str | None:
    """Brand name of a bare digit string by IIN prefix and length, or None."""
    if not (digits.isascii() and digits.isdigit()):
        return None
    n = len(digits)
    if not 12 <= n <= 19:
        return None
    if digits.startswith("0604"):
        return "maestro"  # the one IIN with a leading zero
    starts, names = _BRAND_TABLE[n]
    return names[bisect.bisect_right(starts, int(digits[:6])) - 1]


def is_valid_card(digits: str) -> bool:
    """A known brand's prefix and length, and the Luhn check."""
    return digits.isascii() and digits.isdigit() and card_brand(digits) is not None and luhn_valid(digits)


# Separators between printed groups: space, dash, dot, and their typographic cousins (no-break and thin
# spaces, the Unicode hyphens and dashes) that copy-paste from web pages and PDFs brings along, tabs (tables),
# and the full-width space and hyphen of CJK input methods.
_SPACES = " \t\u00a0\u2007\u2009\u202f\u3000"
_DASHES = "-\u2010\u2011\u2012\u2013\u2014\u2212\uff0d"
DASHES = _DASHES  # shared with the SSN and long-number recognizers
SEP_CLASS = "[" + re.escape(_SPACES + _DASHES + ".") + "]"
# between groups: one separator, or two spaces, or a line break (a number wrapped by a mail client or a PDF
# column, with at most one space on either side of it). `_RUN` is the definition of a run of digit groups;
# `find_cards` splits a candidate into runs without it (see `_layout`), and the tests check both agree.
_RUN = re.compile(r"\d+(?:(?:" + SEP_CLASS + r"|  | ?\n ?)\d+)*")
# The same rule as a set: the whole gap between two digit groups that keeps them in one run.
_JOINS = frozenset((*_SPACES, *_DASHES, ".", "  ", "\n", " \n", "\n ", " \n "))
# Splits a candidate (ASCII digits and separators only) into digit groups and the gaps between them.
_PIECES = re.compile(r"([^0-9]+)")


def _sep_class(ch: str) -> str:
    return " " if ch in _SPACES or ch == "\n" else "-" if ch in _DASHES else ch


def _layout_ok(sizes: list[int], seps: set[str] | frozenset[str]) -> bool:
    if len(sizes) == 1:
        return True
    if sizes in ([4, 6, 5], [4, 6, 4]):
        return True
    if "." in seps:  # dotted: only full groups of four (a decimal or a version string is not a card)
        return len(sizes) >= 3 and all(s == 4 for s in sizes[:-1]) and 2 <= sizes[-1] <= 4
    return all(s == 4 for s in sizes[:-1]) and 1 <= sizes[-1] <= 4


def _glued(text: str, start: int, end: int) -> str | None:
    """How text[start:end] is attached to its neighbours: None (free-standing), "letters" (a word or a "+"
    glued to it, as in ``visa4111...``, ``4111...exp`` or ``+4915123454998``: still reported, with a lower
    score) or "token" (part of a longer number, a decimal, or an identifier such as ``ORD-4111...``: not a
    card)."""
    before = text[start - 1] if start > 0 else ""
    after = text[end] if end < len(text) else ""
    if before.isdigit() or after.isdigit():
        return "token"
    # "+" starts an E.164 phone number ("+49 1512 3454998" may pass Luhn as a 13-digit Visa): the phone
    # recognizer's 0.8 then outranks the card's 0.6, and a "+" before 16+ digits (no phone) is still masked
    glue = "letters" if before == "+" else None
    if before == "." and start > 1 and text[start - 2].isdigit():
        return "token"  # the fractional part of a decimal (a comma is left alone: CSV rows are full of cards)
    if after == "." and end + 1 < len(text) and text[end + 1].isdigit():
        return "token"
    if before in _DASHES and start > 1 and text[start - 2].isalnum():
        k = start - 1
        while k > 0 and text[k - 1].isalnum():
            k -= 1
        word = text[k : start - 1]
        if any(c.isdigit() for c in word) or word.lower() in ID_PREFIXES:
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
        word = letters_before(text, start)
        k = start - len(word)
        if word.lower().strip("_") in ID_PREFIXES or (k > 0 and text[k - 1].isdigit()):
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


def _continues_layout(text: str, start: int, end: int, seps: frozenset[str]) -> bool:
    """Does a short token with digits (at most four characters, the size of a printed group) sit next to the
    window across one of the window's own separators, itself followed by the same separator or the end (a
    longer grouped run: a USPS tracking number, an IBAN's digit groups)? A longer token ("ref 12345 4111
    ...") or one that starts a differently separated layout ("4111 1111 1111 1111 5500-0000-...") does not
    continue it."""
    if not seps:
        return False
    if start > 1 and _sep_class(text[start - 1]) in seps:
        k = start - 1
        while k > 0 and text[k - 1].isalnum():
            k -= 1
        token = text[k : start - 1]
        before = _sep_class(text[k - 1]) if k > 0 else ""
        other_layout = before in (" ", "-", ".") and before not in seps and k > 1 and text[k - 2].isdigit()
        if len(token) <= 4 and any(c.isdigit() for c in token) and not other_layout:
            return True
    if end + 1 < len(text) and _sep_class(text[end]) in seps:
        k = end + 1
        while k < len(text) and text[k].isalnum():
            k += 1
        token = text[end + 1 : k]
        is_date = k + 1 < len(text) and text[k] in "/:" and text[k + 1].isdigit()  # "... 1111 12/27"
        nxt = text[k] if k < len(text) else ""
        other_layout = nxt and _sep_class(nxt) not in seps and _sep_class(nxt) in (" ", "-", ".") and (
            k + 1 < len(text) and text[k + 1].isdigit())
        if len(token) <= 4 and any(c.isdigit() for c in token) and not is_date and not other_layout:
            return True
    return False


# A cheap prefilter: 12+ characters of digits and separators between two digits. Everything shorter cannot
# hold a card, and most digit runs in logs (dates, times, counters) are shorter.
_CANDIDATE = re.compile("[0-9][0-9" + re.escape(_SPACES + _DASHES + ".\n") + "]{10,}[0-9]")

# Unknown IIN policy: a Luhn-valid 13-19 digit run in a card layout whose IIN belongs to no network above is
# read as a card at 0.7 when a card word precedes it ("card 9111 1111 1111 1115": reported), and at 0.4
# otherwise: below `detect_pii`'s 0.5, so it is not *reported*, but above `MASK_MIN_SCORE` (0.35), so
# `mask_pii` still masks it. Masking errs toward hiding: an unlisted network's card must not leak, and a
# millisecond timestamp masked by mistake costs nothing. The same 0.4 goes to a window that a neighbouring
# four-digit group could continue ("ref 1234 4111 1111 1111 1111"): ambiguous, so masked, not reported.
UNKNOWN_IIN_SCORE = 0.4
UNKNOWN_IIN_WITH_CONTEXT = 0.7


# A candidate's shape: its digits read as 0, its separators kept ("0000 0000 0000 0000"). Everything
# `find_cards` decides before Luhn (runs, groups, layout windows) depends on the shape alone, and a log repeats
# a few shapes (cards, IBAN digits, phone numbers, timestamps), so that work is cached per shape.
_SHAPE = str.maketrans("123456789", "000000000")
_NOT_DIGITS = {ord(c): None for c in _SPACES + _DASHES + ".\n"}  # deletes a candidate's separators
# Shapes up to this length are cached (a few hundred in a log); a longer candidate is rare (and adversarial
# input could make every one different), so its layout is worked out each time and not kept.
_CACHED_SHAPE = 64


@lru_cache(maxsize=4096)
def _layout(shape: str) -> tuple[tuple[tuple[int, ...], tuple[int, ...], tuple, tuple], ...]:
    """Where a candidate of this `shape` may hold a card; with it cached, a candidate costs two
    `str.translate` calls, one lookup, and two strided sums per window.

    One entry per run of digit groups (what `_RUN` finds in the candidate) of 12+ characters that has a
    card-layout window or may hold several cards: (character offset of each of its groups, their sizes,
    windows, tiles). A window is ``(a, b, kept, doubled, start, end, seps)``: its digits are ``digits[a:b]``
    of the candidate's digits, at ``candidate[start:end]``, with Luhn slices `kept` and `doubled` (see
    `_luhn_slices`). Tiles, for runs of six groups or more, are ``(kept, doubled, b)`` of the first windows
    `_tiled` tries (three to five groups, 13-19 digits): unless one of them passes Luhn, it finds nothing."""
    pieces = _PIECES.split(shape)  # digits, gap, digits, ..., digits: a candidate starts and ends with a digit
    sizes, gaps = [len(p) for p in pieces[::2]], pieces[1::2]
    char_at, digit_at, c, d = [], [], 0, 0
    for k, size in enumerate(sizes):
        char_at.append(c)
        digit_at.append(d)
        c += size + (len(gaps[k]) if k < len(gaps) else 0)
        d += size
    runs, lo = [], 0
    for k in range(len(sizes)):
        if k < len(gaps) and gaps[k] in _JOINS:
            continue  # the run goes on
        n, first = k + 1 - lo, digit_at[lo]
        if char_at[k] + sizes[k] - char_at[lo] >= 12:  # a shorter run cannot hold a card
            joins = [_sep_class(g[0]) for g in gaps[lo:k]]
            windows = tuple((first + a, first + b, *_luhn_slices(first + a, first + b),
                             char_at[lo + i], char_at[lo + j] + sizes[lo + j], seps)
                            for i, j, a, b, seps in _run_windows(sizes[lo : k + 1], joins))
            ends = [digit_at[lo + j] + sizes[lo + j] for j in range(2, min(n, 5))] if n >= 6 else []
            tiles = tuple((*_luhn_slices(first, end), end) for end in ends if 13 <= end - first <= 19)
            if windows or tiles:
                runs.append((tuple(char_at[lo : k + 1]), tuple(sizes[lo : k + 1]), windows, tiles))
        lo = k + 1
    return tuple(runs)


def _luhn_slices(a: int, b: int) -> tuple[int, int]:
    """Luhn over ``digits[a:b]`` keeps ``digits[kept:b:2]`` as they are (the last digit and every second one
    before it) and doubles ``digits[doubled:b:2]``: (kept, doubled)."""
    return a + (b - 1 - a) % 2, a + (b - a) % 2


def _run_windows(sizes: list[int], joins: list[str]) -> list[tuple[int, int, int, int, frozenset[str]]]:
    """(i, j, a, b, separators) for every window of groups i..j of a run (groups of these `sizes`, and the
    separator class after each) that is a printed card layout of 12-19 digits (digits a..b of the run)."""
    n = len(sizes)
    offsets = list(accumulate(sizes, initial=0))
    out = []
    for i in range(n):
        if offsets[n] - offsets[i] < 12:
            break  # too few digits left for any card
        j, seps = i, set()
        while (total := offsets[j + 1] - offsets[i]) <= 19:
            if total >= 12 and _layout_ok(list(sizes[i : j + 1]), seps):
                out.append((i, j, offsets[i], offsets[j + 1], frozenset(seps)))
            j += 1
            if j == n or sizes[j - 1] not in (4, 6):
                break  # an inner group of a printed card has 4 (or Amex/Diners' 6) digits
            seps.add(joins[j - 1])
            if "." in seps and len(seps) > 1:
                break  # dots never mix with other separators
    return out


# Digit values, and doubled digit values (minus 9 above 9), as bytes: Luhn over a slice is two strided sums.
_VALUES = bytes.maketrans(b"0123456789", bytes(range(10)))
_DOUBLED_VALUES = bytes.maketrans(b"0123456789", bytes((0, 2, 4, 6, 8, 1, 3, 5, 7, 9)))


def _card_span(text: str, start: int, end: int, digits: str, seps: frozenset[str]) -> PiiSpan | None:
    """A Luhn-valid window: brand first, then how the window sits in the text."""
    brand = card_brand(digits)
    if brand is None and (not 13 <= len(digits) <= 19 or digits[0] == "0"):
        return None
    glue = _glued(text, start, end)
    if glue == "token":
        return None
    base = 0.9 if glue is None else 0.6
    if _continues_layout(text, start, end, seps):
        base = UNKNOWN_IIN_SCORE
    if brand is None:
        ctx = has_context(text, start, "CARD")
        score = UNKNOWN_IIN_WITH_CONTEXT if ctx and base > UNKNOWN_IIN_SCORE else UNKNOWN_IIN_SCORE
        return PiiSpan("CARD", start, end, text[start:end], score_with_context(text, start, "CARD", score, boost=0))
    if brand == "maestro":
        if not digits.startswith(_MAESTRO_IINS) and not has_context(text, start, "CARD"):
            return None
        base -= 0.1
    # An argue-against word ("order", "ref", "USPS") keeps a listed network's valid number from being
    # *reported*, never from being masked: it stays at UNKNOWN_IIN_SCORE at least (a Maestro or glued number
    # after "ref", or a window a neighbouring group continues, would drop below MASK_MIN_SCORE and leak raw).
    score = max(score_with_context(text, start, "CARD", base), UNKNOWN_IIN_SCORE)
    return PiiSpan("CARD", start, end, text[start:end], score)


def find_cards(text: str) -> Iterator[PiiSpan]:
    """All card numbers in `text` (may overlap each other only in pathological runs; `detect_pii` resolves)."""
    for cand in _CANDIDATE.finditer(text):
        value, pos = cand.group(), cand.start()
        shape = value.translate(_SHAPE)
        runs = (_layout if len(shape) <= _CACHED_SHAPE else _layout.__wrapped__)(shape)
        if not runs:
            continue  # no run long enough, or laid out like a card
        digits = value.translate(_NOT_DIGITS)
        raw = digits.encode()
        plain, doubled = raw.translate(_VALUES), raw.translate(_DOUBLED_VALUES)
        for group_at, group_sizes, windows, tiles in runs:
            found = False
            for a, b, kept, dbl, start, end, seps in windows:
                if (sum(plain[kept:b:2]) + sum(doubled[dbl:b:2])) % 10:
                    continue  # fails Luhn: the cheapest test, it rejects nine windows in ten
                span = _card_span(text, pos + start, pos + end, digits[a:b], seps)
                if span is not None:
                    yield span
                    if span.score > UNKNOWN_IIN_SCORE:
                        found = True
                        yield from _details_after(text, span.end)
            if not found and any((sum(plain[k:b:2]) + sum(doubled[d:b:2])) % 10 == 0 for k, d, b in tiles):
                yield from _tiled(text, [pos + k for k in group_at],
                                  [value[k : k + size] for k, size in zip(group_at, group_sizes)])


def _tiled(text: str, starts: list[int], parts: list[str]) -> Iterator[PiiSpan]:
    """Several same-layout cards in one run ("4111 1111 1111 1111 5555 5555 5555 4444"): if the run (its group
    `starts` and digit `parts`) splits exactly into consecutive valid cards of four-digit groups (the last
    group of each may be shorter), report each one. A random run splits so only about once in a hundred tries
    per card, and then masking wins."""
    first = ["".join(parts[: j + 1]) for j in range(2, min(len(parts), 5))]
    if not any(13 <= len(d) <= 19 and is_valid_card(d) for d in first):
        return  # the run cannot start with a card, so it cannot split into cards (the common case)
    best: dict[int, list[tuple[int, int]] | None] = {len(parts): []}
    for i in range(len(parts) - 1, -1, -1):
        best[i] = None
        for j in range(i + 2, min(len(parts), i + 5)):
            digits = "".join(parts[i : j + 1])
            rest = best.get(j + 1)
            if rest is not None and 13 <= len(digits) <= 19 and is_valid_card(digits):
                best[i] = [(i, j), *rest]
                break
    if best[0] and len(best[0]) >= 2:
        for i, j in best[0]:
            start, end = starts[i], starts[j] + len(parts[j])
            yield PiiSpan("CARD", start, end, text[start:end], score_with_context(text, start, "CARD", 0.85))


# Expiry and CVV printed right after a card number ("4111 1111 1111 1111 12/27 123", "4111...,12/27,USD").
_AFTER_CARD = re.compile(r"[ \t,;|/]{1,3}((?:0[1-9]|1[0-2])/(?:20[0-9]{2}|[0-9]{2}))(?![\w/])"
                         r"(?:[ \t,;|/]{1,3}([0-9]{3,4})(?![\w/.]))?")


def _details_after(text: str, end: int) -> Iterator[PiiSpan]:
    m = _AFTER_CARD.match(text, end)
    if m:
        yield PiiSpan("CARD_EXPIRY", m.start(1), m.end(1), m.group(1), 0.7)
        if m.group(2):
            yield PiiSpan("CARD_CVV", m.start(2), m.end(2), m.group(2), 0.6)
