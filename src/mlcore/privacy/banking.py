"""Bank identifiers: IBAN (ISO 13616), ABA routing numbers, and account numbers given context.

IBAN = country code (2 letters) + check digits (2) + BBAN; the total length is fixed per country
(table below: the SWIFT IBAN registry). Printed form groups four characters with single spaces
("GB82 WEST 1234 5698 7654 32"). A candidate is read up to the country's length, must end at a group
boundary, and must pass ISO 7064 MOD 97-10.

ABA routing numbers are nine digits with a 3-7-1 checksum; one random 9-digit number in ten passes it, so
they are reported only after a context word ("routing", "ABA", ...). Account numbers (6-17 digits) have no
checksum at all and are reported only right after "account", "acct", "a/c" ...
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from mlcore.privacy.checksums import aba_valid, iban_checksum_valid
from mlcore.privacy.context import has_context
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
_IBAN_START = re.compile(r"(?<![0-9])([A-Za-z]{2})(\d{2})(?=[ ]?[A-Za-z0-9])")


def find_ibans(text: str) -> Iterator[PiiSpan]:
    for m in _IBAN_START.finditer(text):
        length = IBAN_LENGTHS.get(m.group(1).upper())
        if length is None:
            continue
        # read `length` alphanumerics, allowing one space between characters
        chars, pos, n = [], m.start(), len(text)
        while pos < n and len(chars) < length:
            ch = text[pos]
            if ch.isascii() and ch.isalnum():  # lowercase too: people type "de89 3704 ..."
                chars.append(ch)
                pos += 1
            elif ch == " " and chars and pos + 1 < n and text[pos + 1].isalnum() and text[pos - 1] != " ":
                pos += 1
            else:
                break
        if len(chars) != length:
            continue
        if pos < n and text[pos].isalnum():
            continue  # the run goes on: wrong length, or we stopped inside a group
        value = "".join(chars)
        if iban_valid(value.upper()):
            score = 0.95 if has_context(text, m.start(), "IBAN") else 0.9
            if not value.isupper():
                score -= 0.05
            if m.start() > 0 and text[m.start() - 1].isalpha():
                score -= 0.2
            yield PiiSpan("IBAN", m.start(), pos, text[m.start() : pos], score)


_NINE = re.compile(r"(?<![\w.-])\d{9}(?![\w]|[.-]\d)")


def find_routing_numbers(text: str) -> Iterator[PiiSpan]:
    for m in _NINE.finditer(text):
        if aba_valid(m.group()) and has_context(text, m.start(), "ABA_ROUTING", window=30):
            yield PiiSpan("ABA_ROUTING", m.start(), m.end(), m.group(), 0.9)


_ACCOUNT = re.compile(
    r"(?<![a-z])(?:account|acct|a/c|acc)\.?(?:[ \t]*(?:number|num|no\.?|nr\.?|#))?[ \t]*(?:[:#=]|is\b|was\b)?[ \t]*"
    r"((?-i:[A-Z]{1,4})?\d(?:-?\d){5,16})(?![\w]|[.,-]\d)",
    re.IGNORECASE,
)


def find_account_numbers(text: str) -> Iterator[PiiSpan]:
    for m in _ACCOUNT.finditer(text):
        yield PiiSpan("ACCOUNT_NUMBER", m.start(1), m.end(1), m.group(1), 0.75)
