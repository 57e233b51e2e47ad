"""`detect_pii`: run every recognizer, keep the confident hits, resolve overlaps.

The recognizers are plain generator functions ``text -> Iterator[PiiSpan]`` in `mlcore.privacy.recognizers`
(one module per family: `cards`, `card_details`, `national_ids`, `banking`, `contact`, `secrets`); add your
own by passing `recognizers`. Each one is fast because its scan starts with a cheap prefilter (a literal or
leading-character-class regex without look-behinds, or a literal keyword scan of the lowercased text for the
kinds that need a context word) and validates (Luhn, MOD 97-10, registry lengths, issuing rules) only what
that finds. Detection is linear in the text length; for inputs too large to hold, use `mask_stream` or
`StreamScanner`, which scan a bounded window.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence

from mlcore.privacy.recognizers.banking import (
    find_account_numbers,
    find_ibans,
    find_routing_numbers,
    find_sort_codes,
)
from mlcore.privacy.recognizers.card_details import find_card_details, find_ocr_cards
from mlcore.privacy.recognizers.cards import find_cards
from mlcore.privacy.recognizers.contact import find_dates_of_birth, find_emails, find_ips, find_phones
from mlcore.privacy.recognizers.national_ids import (
    find_ca_sins,
    find_national_ids,
    find_passports,
    find_uk_ninos,
)
from mlcore.privacy.recognizers.secrets import find_secrets
from mlcore.privacy.spans import KINDS, PiiSpan, resolve_overlaps

Recognizer = Callable[[str], Iterator[PiiSpan]]

RECOGNIZERS: tuple[Recognizer, ...] = (
    find_cards,
    find_national_ids,
    find_ibans,
    find_routing_numbers,
    find_account_numbers,
    find_emails,
    find_phones,
    find_ips,
    find_dates_of_birth,
    find_secrets,
    find_card_details,
    find_ocr_cards,
    find_sort_codes,
    find_uk_ninos,
    find_ca_sins,
    find_passports,
)

MAX_CHARS = 64 * 1024 * 1024

# Masking leans to recall: `detect_pii` reports hits scoring at least 0.5, while everything that *replaces*
# values (mask_pii, mask_stream, Pseudonymizer, scan_input, scan_output) defaults to this lower bar, so a
# valid card after an argue-against word ("order 4111 1111 1111 1111" scores 0.4) is not reported as a card
# but is still not let through raw. Over-redacting an order number costs little; leaking a card does not.
MASK_MIN_SCORE = 0.35


def check_text(text: object, name: str = "text") -> str:
    """Raise a TypeError for anything but str (bytes included: decode them first)."""
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}; decode bytes before scanning")
    return text


def excerpt(value: object, limit: int = 24) -> str:
    """At most `limit` characters of `value` for an error message (inputs may be huge, or personal data)."""
    text = str(value)
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def check_str_list(values: object, name: str) -> tuple[str, ...]:
    """`values` as a tuple of str; a single str (or bytes) is refused instead of being read letter by letter."""
    if isinstance(values, str | bytes | bytearray):
        raise TypeError(
            f"{name} must be a list of strings, got a single {type(values).__name__} {excerpt(values)}; "
            f"wrap it in a list: {name}=[...]"
        )
    try:
        out = tuple(values)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be a list of strings, got {type(values).__name__}") from None
    bad = next((v for v in out if not isinstance(v, str)), None)
    if bad is not None:
        raise TypeError(f"{name} must contain only str, found a {type(bad).__name__}")
    return out


def check_kinds(kinds: Iterable[str] | None) -> frozenset[str] | None:
    """`kinds` as a frozenset of known kind names (None stays None); a bare str such as "CARD" is refused."""
    if kinds is None:
        return None
    kinds = frozenset(check_str_list(kinds, "kinds"))
    unknown = sorted(kinds - set(KINDS))
    if unknown:
        # echo only what looks like a kind name: a caller may have passed a value by mistake
        shown = [k if isinstance(k, str) and k.replace("_", "").isalpha() and len(k) <= 32 else "<value>"
                 for k in unknown]
        raise ValueError(f"kinds contains unknown kind(s) {shown}; expected a subset of {list(KINDS)}")
    return kinds


def check_min_score(min_score: object, name: str = "min_score") -> float:
    """A number in [0, 1] (bool, str and NaN refused)."""
    if isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or not 0.0 <= min_score <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {min_score!r}")
    return min_score


def check_positive_int(value: object, name: str, minimum: int = 1) -> int:
    """An int (not bool) of at least `minimum`: TypeError for other types, ValueError below the minimum."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {excerpt(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def check_recognizers(recognizers: object) -> tuple[Recognizer, ...]:
    """A tuple of callables; a single function or a None inside the list is refused here, not mid-scan."""
    if callable(recognizers) or isinstance(recognizers, str):
        raise TypeError("recognizers must be a sequence of recognizer functions, got a single "
                        f"{type(recognizers).__name__}; pass recognizers=(*RECOGNIZERS, mine)")
    try:
        out = tuple(recognizers)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError("recognizers must be a sequence of recognizer functions, "
                        f"got {type(recognizers).__name__}") from None
    for r in out:
        if not callable(r):
            raise TypeError(f"recognizers must contain only functions (text -> spans), found a {type(r).__name__}")
    return out


# The no-break, figure, thin and ideographic spaces and the Unicode hyphens and dashes that copy-paste from
# web pages, word processors and PDFs puts between digit groups ("234\u00a056\u00a07891", "+44\u00a020 ...",
# an IBAN grouped with U+202F): read as " " and "-" by every recognizer, not only by the card one.
_UNICODE_SPACES = "\u00a0\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
_UNICODE_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63\uff0d"
_SEPARATORS = {**{ord(c): 32 for c in _UNICODE_SPACES}, **{ord(c): 45 for c in _UNICODE_DASHES}}
# Full-width ASCII (U+FF01-U+FF5E, what CJK input methods type: "ＮＬ５３ＡＰＴＨ...", "０８５．９５．...") is its
# ASCII character shifted by 0xFEE0; NFKC folds it the same way, one character to one.
_FULLWIDTH_OFFSET = 0xFEE0


def ascii_form(text: str) -> str:
    """`text` with every Unicode decimal digit (Arabic-Indic, fullwidth, Devanagari, ...) replaced by its
    ASCII digit, full-width letters and punctuation by their ASCII ones, and the Unicode spaces and dashes
    above by " " and "-". One character maps to one character, so offsets into the result are offsets into
    `text`."""
    if text.isascii():
        return text
    chars = set(text)
    table = {ord(c): ord(c) - _FULLWIDTH_OFFSET for c in chars if "\uff01" <= c <= "\uff5e"}
    table.update((ord(c), 48 + unicodedata.decimal(c)) for c in chars if not c.isascii() and c.isdecimal())
    table.update((ord(c), _SEPARATORS[ord(c)]) for c in chars if ord(c) in _SEPARATORS)
    return text.translate(table) if table else text


def visible_form(text: str) -> tuple[str, list[int] | None]:
    """`text` without its invisible format characters (general category Cf: zero-width space and joiners,
    soft hyphen, word joiner, BOM, bidi controls), and the index in `text` of each character kept (None when
    nothing was removed). They render as nothing, so "4\\u200b1\\u200b1\\u200b1..." *shows* a card number that
    no pattern reads as one; the recognizers read the visible form and spans are mapped back."""
    if text.isascii():
        return text, None
    hidden = {c for c in set(text) if unicodedata.category(c) == "Cf"}
    if not hidden:
        return text, None
    index = [i for i, c in enumerate(text) if c not in hidden]
    return "".join(text[i] for i in index), index


def detect_pii(
    text: str,
    *,
    kinds: Iterable[str] | None = None,
    min_score: float = 0.5,
    recognizers: Sequence[Recognizer] = RECOGNIZERS,
) -> list[PiiSpan]:
    """All personal data and secrets in `text`, as non-overlapping spans sorted by start.

    Args:
        text: the text to scan (at most 64 Mi characters; stream anything larger).
        kinds: keep only these kinds (see `mlcore.privacy.spans.KINDS`); None keeps all.
        min_score: drop hits below this confidence, in [0, 1].
        recognizers: the recognizer functions to run.
    """
    check_text(text)
    wanted = check_kinds(kinds)
    recognizers = check_recognizers(recognizers)
    check_min_score(min_score)
    if len(text) > MAX_CHARS:
        raise ValueError(
            f"text has {len(text)} characters, more than {MAX_CHARS}; stream it with mask_stream or StreamScanner"
        )
    visible, index = visible_form(text)
    scanned = ascii_form(visible)  # recognizers read ASCII digits and separators; spans report the original characters
    found = [
        span if scanned is text else _original(span, text, index)
        for recognize in recognizers
        for span in recognize(scanned)
        if span.score >= min_score and (wanted is None or span.kind in wanted)
    ]
    return resolve_overlaps(found)


def _original(span: PiiSpan, text: str, index: list[int] | None) -> PiiSpan:
    """`span` (found in the visible ASCII form) as offsets and characters of the original `text`; invisible
    characters inside the value belong to it, those around it do not."""
    start, end = span.start, span.end
    if index is not None and end > start:
        start, end = index[start], index[end - 1] + 1
    return PiiSpan(span.kind, start, end, text[start:end], span.score)
