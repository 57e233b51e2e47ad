"""Context words: the words around a candidate that make a reading more (or less) likely.

A 9-digit number is nothing special; "routing number: 021000021" is. Presidio calls this context
enhancement (the LemmaContextAwareEnhancer): a recognizer's base score is raised when one of its kind's
words occurs in a window before the match. Here the window is measured in characters and the words are
matched case-insensitively at word boundaries. Some kinds are only reported *with* context
(account numbers, routing numbers, dates of birth, generic secrets); for the others context only raises
the score.
"""

from __future__ import annotations

import re

CONTEXT_WORDS: dict[str, tuple[str, ...]] = {
    "CARD": ("card", "credit", "debit", "visa", "mastercard", "amex", "cc", "pan", "card number", "cardholder"),
    "SSN": ("ssn", "social security", "social sec", "ss#", "ss no"),
    "ITIN": ("itin", "taxpayer", "tax id", "tin"),
    "IBAN": ("iban", "bank", "account", "transfer", "wire", "sepa"),
    "ABA_ROUTING": ("routing", "aba", "rtn", "transit", "routing number", "routing no"),
    "ACCOUNT_NUMBER": ("account", "acct", "a/c", "account number", "account no", "acc no", "checking", "savings"),
    "EMAIL": ("email", "e-mail", "mail", "contact"),
    "PHONE": ("phone", "tel", "telephone", "mobile", "cell", "call", "fax", "whatsapp", "sms"),
    "IP_ADDRESS": ("ip", "address", "host", "client", "server", "src", "dst", "from"),
    "DATE_OF_BIRTH": ("dob", "d.o.b", "born", "birth", "birthday", "date of birth", "birthdate"),
    "SECRET": (
        "password", "passwd", "pwd", "secret", "token", "api key", "api_key", "apikey", "access key",
        "client_secret", "auth", "bearer", "credential", "private key",
    ),
}

# Words that argue *against* a reading (a "version 1.2.3.4" is not an IP address).
NEGATIVE_WORDS: dict[str, tuple[str, ...]] = {
    "IP_ADDRESS": ("version", "ver", "v", "release", "build"),
    "PHONE": ("order", "invoice", "tracking", "ref", "reference", "serial"),
    # only words that rarely sit by chance before a real card: "no raw card survives" outranks precision
    "CARD": ("order", "tracking", "invoice", "serial", "ref", "isbn", "gtin", "barcode", "fedex", "usps", "parcel",
             "shipment", "imei"),
}

_PATTERNS: dict[str, re.Pattern[str]] = {}


def _pattern(words: tuple[str, ...]) -> re.Pattern[str]:
    key = "\x00".join(words)
    if key not in _PATTERNS:
        alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
        _PATTERNS[key] = re.compile(rf"(?<![a-z0-9])(?:{alternatives})(?![a-z0-9])", re.IGNORECASE)
    return _PATTERNS[key]


_CLAUSE_BREAKS = ("\n", ";", "|", ". ")


def _window_start(text: str, start: int, window: int) -> int:
    """Start of the look-back window, clipped at the last clause break (newline, ';', '|', '. ')."""
    lo = max(0, start - window)
    for brk in _CLAUSE_BREAKS:
        k = text.rfind(brk, lo, start)
        if k >= 0:
            lo = max(lo, k + len(brk))
    return lo


def has_context(text: str, start: int, kind: str, *, window: int = 40, words: tuple[str, ...] | None = None) -> bool:
    """True if one of `kind`'s context words appears in ``text[start - window : start]`` within the same clause."""
    words = CONTEXT_WORDS.get(kind, ()) if words is None else words
    if not words:
        return False
    return _pattern(words).search(text, _window_start(text, start, window), start) is not None


def has_negative_context(text: str, start: int, kind: str, *, window: int = 16) -> bool:
    """True if a word arguing against `kind` sits just before the match (e.g. "version" before an IP)."""
    words = NEGATIVE_WORDS.get(kind, ())
    return bool(words) and _pattern(words).search(text, _window_start(text, start, window), start) is not None


def score_with_context(text: str, start: int, kind: str, base: float, *, boost: float = 0.1,
                       window: int = 40) -> float:
    """`base` raised by `boost` when a context word precedes the match, lowered when a negative word does."""
    score = base
    if has_context(text, start, kind, window=window):
        score += boost
    elif has_negative_context(text, start, kind):  # a positive word outweighs a negative one
        score -= 0.5
    return round(max(0.0, min(1.0, score)), 6)
