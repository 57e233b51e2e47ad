"""Bank identifiers: IBAN (ISO 13616), ABA routing numbers, and account numbers given context.

IBAN = country code (2 letters) + check digits (2) + BBAN; the total length is fixed per country
(table below: the SWIFT IBAN registry). Printed form groups four characters with single spaces
("GB82 WEST 1234 5698 7654 32"); people also write dashes or dots ("DE89-3704-...", "NL91.ABNA...").
A candidate is read up to the country's length with one kind of single separator between characters, must
end at a group boundary, and must pass ISO 7064 MOD 97-10.

ABA routing numbers are nine digits with a 3-7-1 checksum (also printed 4-4-1, "0110-0001-5", as on the
fractional form); one random 9-digit number in ten passes it, so they are reported only after a context word
("routing", "ABA", ...). UK sort codes (six digits, "20-00-00") have no checksum and are reported only after
"sort code". Account numbers (6-17 digits) have no
checksum at all and are reported only right after "account", "acct", "a/c" ...
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from mlcore.privacy.recognizers.checksums import aba_valid, iban_checksum_valid
from mlcore.privacy.recognizers.classes import digit_classes, find_all
from mlcore.privacy.recognizers.context import context_windows, has_context, keyword_regions
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


def find_ibans(text: str) -> Iterator[PiiSpan]:
    n = len(text)
    for m in _iban_heads(text):
        length = IBAN_LENGTHS.get(m.group(1).upper())
        if length is None or (m.start() > 0 and text[m.start() - 1].isdigit()):
            continue
        # read `length` alphanumerics in groups, with one kind of single separator between groups
        # `length` alphanumerics and their separators fit in 2 * length - 1 characters, and the one after them
        # tells whether the last group goes on: reading no further keeps a long run of heads ("GB82 " * k)
        # from costing the whole run at every head
        body = _IBAN_BODY.match(text, m.start(), min(n, m.start() + 2 * length + 1))
        groups, total, pos = body.group(), 0, m.start()
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


def find_routing_numbers(text: str) -> Iterator[PiiSpan]:
    for m in (m for lo, hi in context_windows(text, "ABA_ROUTING", window=30) for m in _NINE.finditer(text, lo, hi)):
        s, e = m.start(), m.end()
        if (s > 0 and (text[s - 1].isalnum() or text[s - 1] in "_.-")) or (e < len(text) and (
                text[e].isalnum() or text[e] == "_" or (text[e] in ".-" and e + 1 < len(text) and text[e + 1].isdigit()))):
            continue
        digits = m.group().replace("-", "")
        if aba_valid(digits) and has_context(text, s, "ABA_ROUTING", window=30):
            yield PiiSpan("ABA_ROUTING", s, e, m.group(), 0.9)


# LABEL_BREAK: the value may open the next line or table cell ("Sort code:\n20-00-00", "| Account | 12345678 |")
LABEL_BREAK = r"(?:(?:\||\r?\n)[ \t]*)?"
# LABEL_QUOTE: the label and the value may be quoted, as in JSON or CSV ('"sort code": "20-00-00"'); used after
# the label and before the value (audit 13: JSON-quoted values leaked)
LABEL_QUOTE = r"[\"']?"
_SORT_CODE = re.compile(r"(?i:sort[ -]?code|\bsc\b)[ \t]*(?:no\.?|number|is)?" + LABEL_QUOTE + r"[ \t]*[:#=]?[ \t]*"
                        + LABEL_BREAK + LABEL_QUOTE + r"([0-9]{2}([-. \t]{0,2})[0-9]{2}\2[0-9]{2})(?![\w]|[.-][0-9])")
# the label is required, so dotted, tabbed or doubled separators ("20.00.00", "20  00  00") are safe to accept
# (audit 13: these leaked)


# "SC 12 34 56 A" is a National Insurance number (prefix SC, suffix A-D), not "SC" (sort code) and six digits
_NINO_TAIL = re.compile(r" ?[A-D](?![A-Za-z0-9])")


def find_sort_codes(text: str) -> Iterator[PiiSpan]:
    """UK sort codes (six digits, usually "20-00-00") right after "sort code"."""
    for m in (m for lo, hi in keyword_regions(text, ("sort code", "sort-code", "sortcode", "sc"))
              for m in _SORT_CODE.finditer(text, lo, hi)):
        if m.group().startswith("SC") and m.group(2) != "-" and _NINO_TAIL.match(text, m.end()):
            continue  # the NINO recognizer reports it
        yield PiiSpan("UK_SORT_CODE", m.start(1), m.end(1), m.group(1), 0.85)


_ACCOUNT = re.compile(
    r"(?<![a-z])(?:account|acct|a/c|acc)\.?(?:[ \t]*(?:number|num|no\.?|nr\.?|#))?" + LABEL_QUOTE + r"[ \t]*(?:[:#=]|is\b|was\b)?[ \t]*"
    + LABEL_BREAK + LABEL_QUOTE + r"((?-i:[A-Z]{1,4})?\d(?:-?\d){5,16})(?![\w]|[.,-]\d)",
    re.IGNORECASE,
)


def find_account_numbers(text: str) -> Iterator[PiiSpan]:
    for m in (m for lo, hi in keyword_regions(text, ("account", "acct", "a/c", "acc"), reach=64)
              for m in _ACCOUNT.finditer(text, lo, hi)):
        yield PiiSpan("ACCOUNT_NUMBER", m.start(1), m.end(1), m.group(1), 0.75)
