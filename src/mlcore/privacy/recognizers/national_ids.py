"""National identifiers: US SSN and ITIN, Canadian SIN, UK National Insurance numbers, passport numbers.

Both are nine digits printed AAA-GG-SSSS (area, group, serial). The Social Security Administration never
issues (SSA, "Social Security Number Randomization", 2011):

- area 000, area 666, or areas 900-999;
- group 00; serial 0000.

Areas 900-999 belong to the IRS: an ITIN is 9XX-GG-SSSS with group in 50-65, 70-88, 90-92 or 94-99.
So a 9xx number is reported as ITIN when its group is in those ranges and rejected otherwise.

Numbers the SSA published as examples and that appear in forms and tests everywhere (123-45-6789,
078-05-1120 from the 1938 Woolworth wallet insert, 219-09-9999 from an SSA leaflet) score 0.3: below the
masking bar, since they identify nobody.

Printed with dashes or spaces, a valid number scores 0.85 (+0.1 with "SSN"/"social security" nearby); a
bare nine-digit run, or one with mixed, doubled or "/" separators or a line break, is only reported with an
SSN / ITIN label: before it, after it ("123456789 (SSN)") or heading its table column (else it is anyone's
nine digits). "/" is safe there: a date is 2/2/4 or 4/2/2, never 3/2/4. A
dashed number glued to a word ("ssn123-45-6789") scores 0.6, unless the word marks an identifier (ORD, SKU).
Dotted ("123.45.6789") scores 0.85 with an SSN word and 0.55 without.

- Canadian Social Insurance Number: nine digits (3-3-3), Luhn-valid, first digit not 0 (unassigned) or 8
  (business numbers), as python-stdnum's ca.sin; reported only with "SIN" / "social insurance" / "NAS" before
  it, after it or heading its column (one nine-digit number in ten passes Luhn).
- UK National Insurance number (HMRC NIM39110): two prefix letters (first not D F I Q U V, second not
  D F I O Q U V, and not BG GB KN NK NT TN ZZ), six digits, a suffix A-D; often printed "AB 12 34 56 C".
  0.75 bare, 0.9 after "national insurance" / "NI number" / "NINO"; HMRC's specimen QQ 12 34 56 C fails the prefix rule.
- Passport numbers have no shared format (US: 9 digits or a letter and 8; UK: 9 digits; Germany: 9
  characters of C-Z and digits; France: 2 digits, 2 letters, 5 digits): 6-9 upper-case letters and digits
  with at least one digit, reported only with "passport" (number / no. / #) before it, after it or heading
  its column. Lower-case or loosely spaced NINOs likewise need their label in one of those places.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from mlcore.privacy.recognizers.banking import LABEL_BREAK, LABEL_QUOTE
from mlcore.privacy.recognizers.cards import DASHES
from mlcore.privacy.recognizers.checksums import luhn_valid
from mlcore.privacy.recognizers.classes import find_all, nino_classes, ssn_classes
from mlcore.privacy.recognizers.context import (
    CONTEXT_WORDS,
    ID_PREFIXES,
    context_windows,
    has_context,
    keyword_regions,
    label_hits,
    label_or_context_before,
    letters_before,
)
from mlcore.privacy.recognizers.label_after import values_before_labels
from mlcore.privacy.recognizers.table_labels import labelled_cells
from mlcore.privacy.spans import PiiSpan

# separators: dot, space, or any dash the card recognizer accepts (U+2010 hyphen, U+2013 en dash, ...: what
# word processors and copy-paste turn "-" into). Such text is not ASCII, so the class-string prefilter in
# `_ssn_matches` is bypassed for it and this pattern sees it whole.
_SSN = re.compile(r"([0-9]{3})([. " + re.escape(DASHES) + r"]?)([0-9]{2})\2([0-9]{4})(?![\w]|[." + re.escape(DASHES)
                  + r"][0-9])")
_DASH_OR_DOT = "." + DASHES
DUMMY_SSNS = frozenset(("123456789", "078051120", "219099999", "111111111", "987654320", "987654321"))
DUMMY_SCORE = 0.3

ITIN_GROUPS = set(range(50, 66)) | set(range(70, 89)) | set(range(90, 93)) | set(range(94, 100))


def classify_ssn(area: int, group: int, serial: int) -> str | None:
    """"SSN", "ITIN" or None (not a number either agency issues)."""
    if area >= 900:
        # the IRS format (9XX-GG-XXXX, group in ITIN_GROUPS; IRS "Individual Taxpayer Identification Number"
        # page and IRM 3.21.263) excludes no serial: "serial 0000" is an SSA rule, so an ITIN with it is valid
        # (python-stdnum's us.itin agrees)
        return "ITIN" if group in ITIN_GROUPS else None
    if group == 0 or serial == 0:
        return None
    if area == 0 or area == 666:
        return None
    return "SSN"


def _free(text: str, s: int, e: int) -> bool:
    """Not inside a longer number, decimal or identifier (the SSN regex carries no look-arounds: speed)."""
    if s > 0 and (text[s - 1].isdigit() or text[s - 1] == "_" or text[s - 1] in _DASH_OR_DOT):
        return False
    if e < len(text) and (text[e].isalnum() or text[e] == "_"):
        return False
    return not (e + 1 < len(text) and text[e] in _DASH_OR_DOT and text[e + 1].isdigit())


# A reported SSN never follows a digit, "_", "." or "-" (see `_free`), so in the class string it is one of
# these shapes after a space or an "x" (any other character): found with `bytes.find`, not tried at every digit.
_SSN_SHAPES = (b"000-00-0000", b"000.00.0000", b"000 00 0000", b" 000000000", b"x000000000")


_FREE_BEFORE = frozenset(b" x")  # class bytes that may precede a reported SSN (not a digit, "_", "." or "-")


def _ssn_matches(text: str) -> Iterator[re.Match[str]]:
    """The `_SSN` matches that can pass `_free`. No such match can start inside another `_SSN` match (inside
    one, a free start follows a space and has at most two digits before the next separator, or ends the match),
    so trying the pattern only at shape starts yields what `_SSN.finditer` yields, minus matches `_free` drops."""
    cls = ssn_classes(text)
    if cls is None:
        yield from _SSN.finditer(text)
        return
    # separated shapes are rare and found from their first digit; a bare nine digits is found with the
    # character before it (else every digit of a long run would be a start)
    starts = sorted({k if cls[k] == 48 else k + 1 for k in find_all(cls, _SSN_SHAPES)})
    if text[:1].isdigit() and starts[:1] != [0]:
        starts.insert(0, 0)
    done = 0
    for s in starts:
        if s < done or (s > 0 and cls[s - 1] not in _FREE_BEFORE):
            continue
        m = _SSN.match(text, s)
        if m is not None:
            done = m.end()
            yield m


# one context search for either kind's words ("SSN" or "ITIN" nearby: the same test as two searches)
_SSN_ITIN_WORDS = CONTEXT_WORDS["SSN"] + CONTEXT_WORDS["ITIN"]

# Mixed or doubled separators ("912-70 1234", "123 - 45 - 6789", "123.45-6789") and Unicode spaces: how users
# and PDFs print numbers, but a bare "123 45-6789" is as likely a reference; reported only with an SSN / ITIN
# label (audit 13: "ITIN 912-70 1234" leaked)
# what people and PDFs put between a number's groups: blanks (tab, no-break and thin spaces), dots, dashes
_LOOSE_SEP_CHARS = r"[ \t\u00a0\u2009\u202f." + re.escape(DASHES) + r"]"
_LOOSE_SEP = _LOOSE_SEP_CHARS + "{0,3}"
# With a label, two more separators are read (audit 6 of round six): "/" ("123/45/6789": a date is 2/2/4 or
# 4/2/2 and a fraction has one slash, so a 3/2/4 shape is neither) and one line break (a value wrapped by a
# mail client or a form, "SSN: 123-45-\n6789"); `_labelled_ssn` allows at most one break.
_LABELLED_SEP = r"[ \t\u00a0\u2009\u202f./\n\r" + re.escape(DASHES) + r"]{0,3}"
_SSN_LOOSE = re.compile(r"([0-9]{3})" + _LABELLED_SEP + r"([0-9]{2})" + _LABELLED_SEP + r"([0-9]{4})")
# the same shape over `ssn_classes` bytes (digits "0"; "-", "." and " " kept; a tab, "/" or newline is "x")
_SSN_LOOSE_CLASSES = re.compile(rb"000[-. x]{0,3}00[-. x]{0,3}0000")


def _labelled_ssn(text: str, m: re.Match[str] | None) -> PiiSpan | None:
    """The SSN / ITIN span a `_SSN_LOOSE` match `m` reads as, given a label: None when it is not one the SSA or
    IRS issues, when it is part of a longer token ("/" or a letter before it, a digit or "/5" after it), or
    when it holds more than one line break."""
    if m is None:
        return None
    start, end = m.span()
    if not _free(text, start, end) or (start > 0 and (text[start - 1].isalpha() or text[start - 1] == "/")):
        return None
    if end + 1 < len(text) and text[end] == "/" and text[end + 1].isdigit():
        return None
    kind = classify_ssn(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    if kind is None or m.group().count("\n") > 1:
        return None
    digits = m.group(1) + m.group(2) + m.group(3)
    return PiiSpan(kind, start, end, m.group(), DUMMY_SCORE if digits in DUMMY_SSNS else 0.85)


def _loose_ssns(text: str) -> Iterator[PiiSpan]:
    """SSN / ITIN spans with loose separators (or none) that an SSN / ITIN label marks: before the value
    ("SSN: 123 45 6789"), after it ("123 45 6789 (SSN)", "123456789 is my SSN"), or as the header of its
    table column ("name,ssn\nAnn,123456789")."""
    cls = ssn_classes(text)  # ASCII text: the shape must show in its class bytes (a literal-prefix scan, cheap)
    if cls is not None and _SSN_LOOSE_CLASSES.search(cls) is None:
        return  # most text: skip the context-word scan
    hits = label_hits(text, _SSN_ITIN_WORDS)
    if not hits:
        return
    for m in (m for lo, hi in context_windows(text, "SSN", window=40, words=_SSN_ITIN_WORDS, hits=hits)
              for m in _SSN_LOOSE.finditer(text, lo, hi)):
        span = _labelled_ssn(text, m)
        if span is not None and label_or_context_before(text, hits, m.start(), "SSN", words=_SSN_ITIN_WORDS):
            yield span
    for start, end in [*values_before_labels(text, hits, _SSN_LOOSE.pattern), *labelled_cells(text, hits)]:
        if (span := _labelled_ssn(text, _SSN_LOOSE.fullmatch(text, start, end))) is not None:
            yield span


def find_national_ids(text: str) -> Iterator[PiiSpan]:
    """SSN and ITIN spans."""
    for m in _ssn_matches(text):
        if not _free(text, m.start(), m.end()):
            continue
        kind = classify_ssn(int(m.group(1)), int(m.group(3)), int(m.group(4)))
        if kind is None:
            continue
        sep = m.group(2)
        if m.start() > 0 and text[m.start() - 1].isalpha():  # glued to a word: "ssn123-45-6789", "x123-45-6789"
            word = letters_before(text, m.start())
            k = m.start() - len(word)
            if not sep or sep not in DASHES or word.lower() in ID_PREFIXES or (k > 0 and text[k - 1].isdigit()):
                continue
            score = 0.6
        elif sep == ".":
            score = 0.85 if has_context(text, m.start(), "SSN", words=_SSN_ITIN_WORDS) else 0.55
        elif sep:
            score = 0.85 + (0.1 if has_context(text, m.start(), "SSN", words=_SSN_ITIN_WORDS) else 0.0)
        elif has_context(text, m.start(), "SSN", window=32, words=_SSN_ITIN_WORDS):
            score = 0.8
        else:
            continue
        if m.group(1) + m.group(3) + m.group(4) in DUMMY_SSNS:
            score = DUMMY_SCORE
        yield PiiSpan(kind, m.start(), m.end(), m.group(), score)
    yield from _loose_ssns(text)  # overlaps with the spans above are resolved by `detect_pii`


_SIN = re.compile(r"(?i:(?<![a-z0-9])(?:sin|nas)(?![a-z0-9])|social[ _-]?insurance|assurance[ _-]?sociale)"
                  r"[^0-9\n]{0,24}?" + LABEL_BREAK +
                  r"\b([1-79][0-9]{2}([-. \t]{0,2})[0-9]{3}\2[0-9]{3})(?![\w]|[.-][0-9])")
# separators after the label: "-", " ", "." or tab, possibly doubled ("046  454  286": audit 13, these leaked)


_SIN_WORDS = ("sin", "social insurance", "nas", "assurance sociale")
# a SIN that a label follows or that sits in a SIN column (same separator twice, or none)
_SIN_VALUE = re.compile(r"[1-79][0-9]{2}([-. \t]{0,2})[0-9]{3}\1[0-9]{3}")
_SIN_VALUE_LOOSE = r"[1-79][0-9]{2}[-. \t]{0,2}[0-9]{3}[-. \t]{0,2}[0-9]{3}"


def _sin_at(text: str, s: int, e: int) -> PiiSpan | None:
    """``text[s:e]`` as a CA_SIN span when it has a SIN's shape, passes Luhn and stands alone."""
    if _SIN_VALUE.fullmatch(text, s, e) is None or not _free(text, s, e):
        return None
    if s > 0 and (text[s - 1].isalpha() or text[s - 1] == "/"):
        return None
    value = text[s:e]
    return PiiSpan("CA_SIN", s, e, value, 0.85) if luhn_valid(re.sub(r"[^0-9]", "", value)) else None


def find_ca_sins(text: str) -> Iterator[PiiSpan]:
    """Canadian Social Insurance Numbers (Luhn-valid, first digit not 8) after a SIN word, before one
    ("046 454 286 (SIN)") or in a SIN table column."""
    hits = label_hits(text, _SIN_WORDS)
    if not hits:
        return
    for m in (m for lo, hi in keyword_regions(text, _SIN_WORDS, hits=hits) for m in _SIN.finditer(text, lo, hi)):
        digits = re.sub(r"[^0-9]", "", m.group(1))
        if luhn_valid(digits):
            yield PiiSpan("CA_SIN", m.start(1), m.end(1), m.group(1), 0.85)
    for start, end in [*values_before_labels(text, hits, _SIN_VALUE_LOOSE), *labelled_cells(text, hits)]:
        if (span := _sin_at(text, start, end)) is not None:
            yield span


_NINO = re.compile(r"([A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z])( ?)([0-9]{2})\2([0-9]{2})\2([0-9]{2})\2"
                   r"([A-D])(?![A-Za-z0-9])")
_NINO_BAD_PREFIXES = frozenset(("BG", "GB", "KN", "NK", "NT", "TN", "ZZ"))


def _nino_matches(text: str) -> Iterator[re.Match[str]]:
    """`_NINO.finditer(text)`; on ASCII text tried only where the class string has one of its two shapes."""
    cls = nino_classes(text)
    if cls is None:
        yield from _NINO.finditer(text)
        return
    done = 0
    for s in find_all(cls, (b"AA000000A", b"AA 00 00 00 A")):
        if s >= done and (m := _NINO.match(text, s)) is not None:
            done = m.end()
            yield m


def find_uk_ninos(text: str) -> Iterator[PiiSpan]:
    """UK National Insurance numbers (HMRC's prefix rules)."""
    for m in _nino_matches(text):
        prefix = m.group(1)
        if m.start() > 0 and text[m.start() - 1].isascii() and text[m.start() - 1].isalnum():
            continue  # inside a longer token (the pattern has no leading look-behind: speed)
        if prefix in _NINO_BAD_PREFIXES:
            continue
        score = 0.9 if has_context(text, m.start(), "UK_NINO") else 0.75
        yield PiiSpan("UK_NINO", m.start(), m.end(), m.group(), score)
    yield from _loose_ninos(text)


# After a NINO label, people type the number in lower or mixed case and with any spacing ("ab 12 34 56 c",
# "ab123456c", "AB-12-34-56-C", "AB 123456 C"). Without a label a lowercase letters-six-digits-letter token is
# too often a code or hash fragment, so the loose form needs the label (audit 13: these leaked).
_NSEP = _LOOSE_SEP_CHARS + "{0,2}"
_NINO_LOOSE = re.compile(r"(?<![A-Za-z0-9])([A-Za-z]{2})" + _NSEP + r"([0-9]{2})" + _NSEP + r"([0-9]{2})" + _NSEP
                         + r"([0-9]{2})" + _NSEP + r"([A-Da-d])(?![A-Za-z0-9])")
_NINO_PREFIX = re.compile(r"[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]")


def _loose_nino_at(text: str, start: int, end: int) -> PiiSpan | None:
    """``text[start:end]`` as a UK_NINO span when it is a NINO in any case and spacing with a valid prefix."""
    m = _NINO_LOOSE.fullmatch(text, start, end)
    if m is None:
        return None
    prefix = m.group(1).upper()
    if not _NINO_PREFIX.fullmatch(prefix) or prefix in _NINO_BAD_PREFIXES:
        return None
    return PiiSpan("UK_NINO", start, end, m.group(), 0.9)


def _loose_ninos(text: str) -> Iterator[PiiSpan]:
    """UK NINO spans in any case and spacing, with a NINO label before them, after them ("ab 12 34 56 c is my
    NI number") or heading their table column."""
    hits = label_hits(text, CONTEXT_WORDS["UK_NINO"])
    if not hits:
        return
    for m in (m for lo, hi in keyword_regions(text, CONTEXT_WORDS["UK_NINO"], reach=48, hits=hits)
              for m in _NINO_LOOSE.finditer(text, lo, hi)):
        if (span := _loose_nino_at(text, m.start(), m.end())) is not None:
            yield span
    for start, end in [*values_before_labels(text, hits, _NINO_LOOSE.pattern), *labelled_cells(text, hits)]:
        if (span := _loose_nino_at(text, start, end)) is not None:
            yield span


_PASSPORT = re.compile(r"(?i:passport)(?:[ \t_-]*(?i:number|num|no\.?|nr\.?|#))?" + LABEL_QUOTE
                       + r"[ \t]*(?:[:#=>]|is\b)?[ \t]*" + LABEL_BREAK + LABEL_QUOTE + r"((?-i:[A-Z0-9]{6,9}))(?![\w])")


_PASSPORT_VALUE = re.compile(r"[A-Z0-9]{6,9}")


def _passport_at(text: str, start: int, end: int) -> PiiSpan | None:
    """``text[start:end]`` as a PASSPORT span: 6-9 upper-case letters and digits, one digit at least, alone."""
    value = text[start:end]
    if (_PASSPORT_VALUE.fullmatch(value) is None or not any(c.isdigit() for c in value)
            or (start > 0 and (text[start - 1].isalnum() or text[start - 1] in "_-/."))
            or (end < len(text) and (text[end].isalnum() or text[end] == "_"))):
        return None
    return PiiSpan("PASSPORT", start, end, value, 0.8)


def find_passports(text: str) -> Iterator[PiiSpan]:
    """Passport numbers right after "passport (number|no.|#)", before it ("X1234567 (passport)") or in a
    passport table column: 6-9 upper-case letters and digits, one digit at least (German numbers may hold a
    single one)."""
    hits = label_hits(text, ("passport",))
    if not hits:
        return
    for m in (m for lo, hi in keyword_regions(text, ("passport",), hits=hits) for m in _PASSPORT.finditer(text, lo, hi)):
        value = m.group(1)
        if any(c.isdigit() for c in value):
            yield PiiSpan("PASSPORT", m.start(1), m.end(1), value, 0.8)
    for start, end in [*values_before_labels(text, hits, _PASSPORT_VALUE.pattern), *labelled_cells(text, hits)]:
        if (span := _passport_at(text, start, end)) is not None:
            yield span
