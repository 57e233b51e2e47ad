"""Bank identifiers: IBAN (ISO 13616), ABA routing numbers, and account numbers given context.

IBAN = country code (2 letters) + check digits (2) + BBAN; the total length is fixed per country
(table below: the SWIFT IBAN registry). Printed form groups four characters with single spaces
("GB82 WEST 1234 5698 7654 32"); people also write dashes or dots ("DE89-3704-...", "NL91.ABNA...").
A candidate is read up to the country's length with one kind of single separator between characters, must
end at a group boundary, and must pass ISO 7064 MOD 97-10.

ABA routing numbers are nine digits with a 3-7-1 checksum (also printed 4-4-1, "0110-0001-5", as on the
fractional form); one random 9-digit number in ten passes it, so they are reported only after a context word
("routing", "ABA", ...). UK sort codes (six digits, "20-00-00") have no checksum and are reported only with
"sort code". Account numbers (6-17 digits) have no checksum at all and are reported only with "account",
"acct", "a/c" ... For all three the label may precede the value, follow it ("021000021 (ABA)", "20-00-00 is
my sort code"), or head its table column (see `mlcore.privacy.recognizers.context`).

An IBAN may be wrapped onto the next line ("GB82 WEST 1234\n5698 7654 32"): its checksum and exact length
keep that safe. A sort code with "/" ("20/00/00") is read only right after its label (else it is a date).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from mlcore.privacy.recognizers.checksums import aba_valid, iban_checksum_valid
from mlcore.privacy.recognizers.classes import digit_classes, find_all
from mlcore.privacy.recognizers.context import (
    CONTEXT_WORDS,
    context_windows,
    has_context,
    keyword_regions,
    label_hits,
    label_or_context_before,
)
from mlcore.privacy.recognizers.label_after import values_before_labels
from mlcore.privacy.recognizers.table_labels import labelled_cells
from mlcore.privacy.spans import PiiSpan

IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
    # added to the registry since 2016 (release 99 and later)
    "BI": 27, "DJ": 27, "FK": 18, "HN": 28, "LY": 25, "MN": 20, "NI": 28, "OM": 23, "RU": 33, "SD": 18,
    "SO": 23, "YE": 30,
}


def iban_valid(iban: str) -> bool:
    """Country known, length right for the country, check digits right (input without spaces)."""
    return (
        isinstance(iban, str)
        and IBAN_LENGTHS.get(iban[:2]) == len(iban)
        and iban.isascii()
        and iban.isalnum()
        and iban == iban.upper()
        and iban_checksum_valid(iban)
    )


# letters may precede the country code ("IBAN:DE89...", "ibanDE89..."): the check digits and the exact
# length make a false start inside a word vanishingly rare; such glued hits score lower
# separators: one kind per value, single or doubled ("GB82  WEST ...": justified text and hand typing double
# spaces); tab, no-break and thin spaces come from PDFs and spreadsheets (audit 13: these leaked)
_IBAN_START = re.compile(r"([A-Za-z]{2})(\d{2})(?=[ .\-\t\u00a0\u2009\u202f]{0,2}[A-Za-z0-9])")
_IBAN_SEPS = " .-\t\u00a0\u2009\u202f"
_IBAN_BODY = re.compile(r"[A-Za-z0-9]+(?:([ .\-\t\u00a0\u2009\u202f])\1?[A-Za-z0-9]+(?:\1\1?[A-Za-z0-9]+)*)?")


def _iban_heads(text: str) -> Iterator[re.Match[str]]:
    """`_IBAN_START.finditer(text)`, tried only where the class string reads "aa00" (two ASCII letters, two
    digits): one `bytes.find` scan instead of an attempt at every letter. Two heads cannot overlap."""
    cls = digit_classes(text)
    if cls is None:
        yield from _IBAN_START.finditer(text)
        return
    for s in find_all(cls, (b"aa00",)):
        m = _IBAN_START.match(text, s)
        if m is not None:
            yield m


# A line break where a separator (or nothing) would be: an IBAN wrapped by a mail client, a PDF column or a
# fixed-width form ("GB82 WEST 1234\n5698 7654 32"), with at most one blank on either side of the break.
_WRAP = re.compile(r"[ \t]?\r?\n[ \t]?(?=[A-Za-z0-9])")


def _read_groups(text: str, start: int, length: int) -> tuple[list[str], int, int, str | None]:
    """Read at most `length` alphanumerics from `start` in groups with one kind of single (or doubled)
    separator between them: (the groups, how many alphanumerics, the end position, the separator or None).

    `length` alphanumerics and their separators fit in 2 * length + 1 characters, and the one after them tells
    whether the last group goes on: reading no further keeps a long run of heads ("GB82 " * k) from costing the
    whole run at every head."""
    body = _IBAN_BODY.match(text, start, min(len(text), start + 2 * length + 1))
    groups, total, pos = body.group(), 0, start
    sep = body.group(1)
    chars = []
    # a doubled separator splits into an empty part, which adds its one character to `pos` and nothing else
    for part in (groups.split(sep) if sep else [groups]):
        chars.append(part)
        total += len(part)
        pos += len(part) + (1 if sep else 0)
        if total >= length:
            break
    pos -= 1 if sep else 0
    return chars, total, pos, sep


def find_ibans(text: str) -> Iterator[PiiSpan]:
    n = len(text)
    for m in _iban_heads(text):
        length = IBAN_LENGTHS.get(m.group(1).upper())
        if length is None or (m.start() > 0 and text[m.start() - 1].isdigit()):
            continue
        chars, total, pos, sep = _read_groups(text, m.start(), length)
        if total < length and (wrap := _WRAP.match(text, pos)) is not None:
            # the rest on the next line (checksum and exact length make a false join vanishingly rare)
            more, more_total, more_pos, more_sep = _read_groups(text, wrap.end(), length - total)
            if sep is None or more_sep is None or more_sep == sep:
                chars, total, pos, sep = chars + more, total + more_total, more_pos, sep or more_sep
        if total != length:
            continue  # wrong length, or the value ends inside a group
        if sep is not None and sep in ".-" and pos + 1 < n and text[pos] == sep and text[pos + 1].isalnum():
            continue  # the dotted / dashed run goes on
        value = "".join(chars)
        if iban_valid(value.upper()):
            score = 0.95 if has_context(text, m.start(), "IBAN") else 0.9
            if not value.isupper():
                score -= 0.05
            if m.start() > 0 and text[m.start() - 1].isalpha():
                score -= 0.2
            yield PiiSpan("IBAN", m.start(), pos, text[m.start() : pos], score)


_NINE = re.compile(r"[0-9]{9}|[0-9]{4}-[0-9]{4}-[0-9]")


def _routing_at(text: str, s: int, e: int) -> PiiSpan | None:
    """The routing number ``text[s:e]`` (a `_NINE` match) as a span, or None when it is part of a longer token
    or fails the ABA checksum."""
    if (s > 0 and (text[s - 1].isalnum() or text[s - 1] in "_.-/$")) or (e < len(text) and (
            text[e].isalnum() or text[e] == "_" or (text[e] in ".-/" and e + 1 < len(text) and text[e + 1].isdigit()))):
        return None
    value = text[s:e]
    if _NINE.fullmatch(value) is None or not aba_valid(value.replace("-", "")):
        return None
    return PiiSpan("ABA_ROUTING", s, e, value, 0.9)


def find_routing_numbers(text: str) -> Iterator[PiiSpan]:
    """ABA routing numbers with a routing label before them ("routing number: 021000021"), after them
    ("021000021 (ABA)") or heading their table column."""
    hits = label_hits(text, CONTEXT_WORDS["ABA_ROUTING"])
    if not hits:
        return
    for m in (m for lo, hi in context_windows(text, "ABA_ROUTING", window=30, hits=hits)
              for m in _NINE.finditer(text, lo, hi)):
        span = _routing_at(text, m.start(), m.end())
        if span is not None and label_or_context_before(text, hits, m.start(), "ABA_ROUTING", window=30):
            yield span
    for s, e in [*values_before_labels(text, hits, _NINE.pattern), *labelled_cells(text, hits)]:
        if (span := _routing_at(text, s, e)) is not None:
            yield span


# LABEL_BREAK: the value may open the next line or table cell ("Sort code:\n20-00-00", "| Account | 12345678 |")
LABEL_BREAK = r"(?:(?:\||\r?\n)[ \t]*)?"
# LABEL_QUOTE: the label and the value may be quoted, as in JSON or CSV ('"sort code": "20-00-00"'), or marked
# as Markdown code or bold ("sort code is `20-00-00`", "**Account:** **12345678**"); used after the label and
# before the value (audit 13: JSON-quoted values leaked)
LABEL_QUOTE = r"[\"'`*]{0,2}"
# a "/" between the groups is read after the label only ("sort code 20/00/00"): a 2/2/2 value written that way
# anywhere else is as likely a date
_SORT_CODE = re.compile(r"(?i:sort[ _-]?code|\bsc\b)[ \t]*(?:no\.?|number|is)?" + LABEL_QUOTE + r"[ \t]*[:#=>]?[ \t]*"
                        + LABEL_BREAK + LABEL_QUOTE
                        + r"([0-9]{2}([-. \t/]{0,2})[0-9]{2}\2[0-9]{2})(?![\w]|[./-][0-9])")
# the label is required, so dotted, tabbed or doubled separators ("20.00.00", "20  00  00") are safe to accept
# (audit 13: these leaked). A ">" after the label is an XML element's ("<sort_code>20-00-00</sort_code>").
# A value that a label follows or that sits in a "sort code" column: no "/" (see above)
_SORT_VALUE = re.compile(r"[0-9]{2}([-. \t]{0,2})[0-9]{2}\1[0-9]{2}")
_SORT_VALUE_LOOSE = r"[0-9]{2}[-. \t]{0,2}[0-9]{2}[-. \t]{0,2}[0-9]{2}"
_SORT_WORDS = ("sort code", "sortcode", "sc")


# "SC 12 34 56 A" is a National Insurance number (prefix SC, suffix A-D), not "SC" (sort code) and six digits
_NINO_TAIL = re.compile(r" ?[A-D](?![A-Za-z0-9])")


def _sort_code_at(text: str, s: int, e: int) -> PiiSpan | None:
    """``text[s:e]`` as a sort-code span when it is one (same separator twice) and stands alone."""
    if _SORT_VALUE.fullmatch(text, s, e) is None:
        return None
    if (s > 0 and (text[s - 1].isalnum() or text[s - 1] in "_.-/$")) or (e < len(text) and (
            text[e].isalnum() or text[e] == "_" or (text[e] in ".-/" and e + 1 < len(text) and text[e + 1].isdigit()))):
        return None
    return PiiSpan("UK_SORT_CODE", s, e, text[s:e], 0.85)


def find_sort_codes(text: str) -> Iterator[PiiSpan]:
    """UK sort codes (six digits, usually "20-00-00") right after "sort code", before it ("20-00-00 is my
    sort code"; "sc" is too short to be read backwards) or in a "sort code" table column."""
    hits = label_hits(text, _SORT_WORDS)  # "sort-code" and "sort_code" read as "sort code"
    if not hits:
        return
    for m in (m for lo, hi in keyword_regions(text, _SORT_WORDS, hits=hits) for m in _SORT_CODE.finditer(text, lo, hi)):
        if m.group().startswith("SC") and m.group(2) != "-" and _NINO_TAIL.match(text, m.end()):
            continue  # the NINO recognizer reports it
        yield PiiSpan("UK_SORT_CODE", m.start(1), m.end(1), m.group(1), 0.85)
    long_hits = [(s, e) for s, e in hits if e - s > 2]
    for s, e in [*values_before_labels(text, long_hits, _SORT_VALUE_LOOSE), *labelled_cells(text, hits)]:
        if (span := _sort_code_at(text, s, e)) is not None:
            yield span


_ACCOUNT = re.compile(
    r"(?<![a-z])(?:account|acct|a/c|acc)\.?(?:[ \t_-]*(?:number|num|no\.?|nr\.?|#))?" + LABEL_QUOTE + r"[ \t]*(?:[:#=>]|is\b|was\b)?[ \t]*"
    + LABEL_BREAK + LABEL_QUOTE + r"((?-i:[A-Z]{1,4})?\d(?:-?\d){5,16})(?![\w]|[.,-]\d)",
    re.IGNORECASE,
)


_ACCOUNT_WORDS = ("account", "acct", "a/c", "acc")
# a value that an account label follows or that sits in an account column: 6-17 digits, single dashes
# between them, up to four capital letters before them
_ACCOUNT_VALUE = re.compile(r"(?:[A-Z]{1,4})?[0-9](?:-?[0-9]){5,16}")


def _account_at(text: str, s: int, e: int) -> PiiSpan | None:
    """``text[s:e]`` as an account-number span when it has the shape above and stands alone (not a sum of
    money, a decimal or part of a longer token)."""
    if _ACCOUNT_VALUE.fullmatch(text, s, e) is None:
        return None
    if s > 0 and text[s - 1] == "," and s > 1 and text[s - 2].isdigit():
        return None  # "12,345,678": thousands (a comma alone before it is a CSV cell's)
    if (s > 0 and (text[s - 1].isalnum() or text[s - 1] in "_.-/$\u00a3\u20ac#+")) or (e < len(text) and (
            text[e].isalnum() or text[e] == "_" or (text[e] in ".,-/" and e + 1 < len(text) and text[e + 1].isdigit()))):
        return None
    return PiiSpan("ACCOUNT_NUMBER", s, e, text[s:e], 0.75)


def find_account_numbers(text: str) -> Iterator[PiiSpan]:
    """Account numbers right after an account label ("account no. 12345678"), before one ("12345678 is my
    account number") or in an account table column."""
    hits = label_hits(text, _ACCOUNT_WORDS)
    if not hits:
        return
    for m in (m for lo, hi in keyword_regions(text, _ACCOUNT_WORDS, reach=64, hits=hits)
              for m in _ACCOUNT.finditer(text, lo, hi)):
        yield PiiSpan("ACCOUNT_NUMBER", m.start(1), m.end(1), m.group(1), 0.75)
    for s, e in [*values_before_labels(text, hits, _ACCOUNT_VALUE.pattern), *labelled_cells(text, hits)]:
        if (span := _account_at(text, s, e)) is not None:
            yield span
