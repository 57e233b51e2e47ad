"""Contact data: e-mail addresses, phone numbers, IP addresses, and dates of birth given context.

- e-mail: the common subset of RFC 5322 addr-spec (dot-atoms: no leading, trailing or doubled dots; domain
  labels of letters, digits and inner hyphens; an alphabetic TLD of 2+ letters).
- phone: E.164 ("+" country code and subscriber number, 8-15 digits in all, optionally grouped) and North
  American national forms ``(415) 555-2671``, ``415-555-2671``, ``415.555.2671`` (optionally ``1-`` before
  and ``x123`` after) with the NANP rule that the area code and exchange start with 2-9; ``415 555 2671``
  and ``4155552671`` only after a phone word ("call", "my number is", within 48 characters), as are other
  national forms: 8-12 digits in groups of 1-6 ("030 12 34 56 78", "06 12 34 56 78", "(0117) 496 0690").
- IP: IPv4 dotted quads (each 0-255, no leading zeros) and IPv6 (RFC 4291 text form, ``::`` compression and
  an embedded IPv4 tail), validated by hand; "version 1.2.3.4" is not an address.
- date of birth: a real calendar date (ISO, US, European dotted, or month names; two-digit years read as the
  latest past year) after "born", "DOB", ...
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator

from mlcore.privacy.recognizers.classes import find_all, ip_classes, phone_classes
from mlcore.privacy.recognizers.context import (
    CONTEXT_WORDS,
    context_windows,
    has_context,
    label_hits,
    label_or_context_before,
    score_with_context,
    search_free,
)
from mlcore.privacy.recognizers.label_after import values_before_labels
from mlcore.privacy.recognizers.table_labels import labelled_cells
from mlcore.privacy.spans import PiiSpan

# The lookahead bounds the local part to RFC 5321's 64 characters before the "@" is seen, so a long run of
# local-part characters without an "@" (base64, query strings) costs O(64) per start, not O(n). Domain
# labels may be internationalised (Unicode letters, RFC 5890) and the top-level domain may be an A-label
# ("xn--p1ai"). The scan starts from each "@" (a literal search, much cheaper than trying every position).
# A "." may precede a match: the leftmost start wins, so ".ann/bob@x.org" (an RFC-invalid leading dot) is
# read as "ann/bob@x.org" and not as "bob@x.org" with "ann/" left in clear.
_EMAIL = re.compile(
    r"(?<![\w%+-])(?=[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@)[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[^\W_](?:(?:[^\W_]|-){0,61}[^\W_])?\.)+(?:[^\W\d_]{2,24}|xn--[A-Za-z0-9-]{1,59})(?![\w-])"
)
_LOCAL_LAST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+/=?^_`{|}~-")
_DOMAIN_FIRST = re.compile(r"[^\W_]")
_CONNECTION_USER = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:]*:$")
# RFC 5322 allows these at the start of a local part, but closed right after the domain they quote the
# address ("'ann@x.org'", "`ann@x.org`", "{ann@x.org}", "|ann@x.org|"): the address starts after them
_CLOSERS = {"'": "'", "`": "`", "{": "}", "|": "|"}


# An address percent-encoded in a URL's query string or path ("?email=ann.lee%40example.com", what browsers
# and HTTP clients send and access logs keep): "%40" is its "@". The local part may hold other escapes
# ("%2B" for "+"); the domain is plain (hostnames need no escaping). The domain is matched from the "%40"
# first (cheap, and most "%40" have none), then the local part that ends at it.
_PCT_DOMAIN = re.compile(r"%40(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])")
_PCT_LOCAL = re.compile(r"(?<![A-Za-z0-9._+%-])(?:[A-Za-z0-9._+-]|%[0-9A-Fa-f]{2}){1,64}\Z")


def _encoded_emails(text: str) -> Iterator[PiiSpan]:
    """Percent-encoded addresses (see `_PCT_DOMAIN`), found from each "%40": a literal search."""
    at = text.find("%40")
    while at >= 0:
        domain = _PCT_DOMAIN.match(text, at)
        # the local part cannot run back past 64 characters, each at most an escape of three
        local = _PCT_LOCAL.search(text, max(0, at - 3 * 64), at) if domain is not None and at > 0 else None
        if local is not None:
            start = local.start()
            while start < at and text[start] in "._-":
                start += 1  # the local part starts with a letter, digit or escape
            if start < at:
                yield PiiSpan("EMAIL", start, domain.end(), text[start : domain.end()], 0.9)
        at = text.find("%40", domain.end() if local is not None else at + 3)


def find_emails(text: str) -> Iterator[PiiSpan]:
    if "%" in text and "%40" in text:  # one character is found at memchr speed, three ~50x slower
        yield from _encoded_emails(text)
    at = text.find("@")
    while at >= 0:
        # an address holds one "@", between a local-part character and a domain letter or digit: checking
        # those two first keeps a run of "@" from re-running the pattern over ~385 characters per "@"
        if not (0 < at < len(text) - 1 and text[at - 1] in _LOCAL_LAST and _DOMAIN_FIRST.match(text, at + 1)):
            at = text.find("@", at + 1)
            continue
        lo = max(0, at - 65)
        for m in _EMAIL.finditer(text, lo, min(len(text), at + 320)):
            if m.start() <= at < m.end():
                start = m.start()
                if start < at - 1 and text[m.end() : m.end() + 1] == _CLOSERS.get(text[start]):
                    start += 1
                    while start < at - 1 and text[start] == ".":
                        start += 1  # "'.ann@x.org'": the dot-atom starts after the dot
                # "scheme://user:password@host" is a credential (see secrets), not an address
                if not _CONNECTION_USER.search(text, max(0, m.start() - 100), m.start()):
                    yield PiiSpan("EMAIL", start, m.end(), text[start : m.end()], 0.95)
                break
        at = text.find("@", at + 1)


_E164 = re.compile(r"\+[1-9](?:[ .-]?\(?\d\)?){7,14}(?:[ ]?(?:x|ext\.?)[ ]?\d{1,6})?(?![\w]|[.-]\d)")
_EXT = r"(?:[ ]?(?:[xX]|[eE][xX][tT](?:\.|[eE][nN][sS][iI][oO][nN])?)[ ]?\d{1,6})?"
_NANP = re.compile(
    r"(?:(?:\+1|001|1)[-. ]?)?(?:\(([2-9]\d{2})\)[ ]?|([2-9]\d{2})([-. ]))([2-9]\d{2})[-. ](\d{4})"
    + _EXT + r"(?![\w]|[.-]\d)"
)
# NANP's optional "+1 (" prefix leaves the engine no first character to search for; this core (area code,
# exchange, line) starts with [2-9], so it is searched first and the full pattern tried just before it.
_NANP_CORE = re.compile(r"[2-9]\d{2}(?:\)[ ]?|[-. ])[2-9]\d{2}[-. ]\d{4}")
_NANP_BARE = re.compile(r"1?[2-9]\d{2}[2-9]\d{6}(?![\w]|[.-]\d)")
# national forms with a trunk 0: "020 7946 0958", "030 12 34 56 78", "06 12 34 56 78", "0612345678"
_NATIONAL = re.compile(r"(?:\d{1,5}|\(0\d{1,4}\))(?:[ ./-]?\d{2,6}){1,5}(?![\w]|[.-]\d)")


def _not_after(chars: str):
    def free(text: str, start: int, end: int) -> bool:
        return start == 0 or not (text[start - 1].isalnum() or text[start - 1] in chars)
    return free


_ALNUM_RUN = re.compile(r"[^\W_]*")  # a run of str.isalnum() characters


def _search_not_after(pattern: re.Pattern[str], text: str, free, pos: int, endpos: int) -> Iterator[re.Match[str]]:
    """`search_free(pattern, text, free, pos, endpos)` for a `free` made by `_not_after`: a match rejected
    because a letter or digit precedes it resumes after the end of that alphanumeric run, since every start
    inside it follows a letter or digit too (the plain loop retried each digit of a long number in turn)."""
    m = pattern.search(text, pos, endpos)
    while m is not None:
        s = m.start()
        if free(text, s, m.end()):
            yield m
            m = pattern.search(text, max(m.end(), s + 1), endpos)
        elif text[s - 1].isalnum():
            m = pattern.search(text, max(_ALNUM_RUN.match(text, s).end(), s + 1), endpos)
        else:
            m = pattern.search(text, s + 1, endpos)


_FREE_E164 = _not_after("_+")
_FREE_NANP = _not_after("_+(")
_FREE_BARE = _not_after("_+.-")
_FREE_NATIONAL = _not_after("_+(")


_NANP_SHAPES = (b"000)s000s0000", b"000)000s0000", b"000s000s0000")


def _nanp_cores(text: str) -> Iterator[re.Match[str]]:
    """Every `_NANP_CORE` match start in order (overlapping ones too). On ASCII text only the starts of its
    three shapes in the class string are tried (`bytes.find`), not every digit."""
    cls = phone_classes(text)
    if cls is None:
        pos = 0
        while (core := _NANP_CORE.search(text, pos)) is not None:
            yield core
            pos = core.start() + 1
        return
    for s in find_all(cls, _NANP_SHAPES):
        core = _NANP_CORE.match(text, s)
        if core is not None:
            yield core


def _nanp(text: str) -> Iterator[re.Match[str]]:
    pos = 0
    for core in _nanp_cores(text):
        if core.start() < pos:
            continue
        found = None
        for k in range(max(0, core.start() - 5), core.start() + 1):  # leftmost start first, as finditer would
            m = _NANP.match(text, k)
            if m is not None and m.end() >= core.end() and _FREE_NANP(text, m.start(), m.end()):
                found = m
                break
        if found is not None:
            yield found
            pos = found.end()
        else:
            pos = core.start() + 1


def find_phones(text: str) -> Iterator[PiiSpan]:
    if "+" in text:
        for m in search_free(_E164, text, _FREE_E164):
            value, end = m.group(), m.end()
            if value[-1] == ")" and value.count(")") > value.count("("):
                value, end = value[:-1], end - 1  # "(+27 10 123 3242)": the bracket closes the prose, not the number
            digits = sum(c.isdigit() for c in value)
            if 8 <= digits <= 15:
                yield PiiSpan("PHONE", m.start(), end, value, score_with_context(text, m.start(), "PHONE", 0.8))
    for m in _nanp(text):
        if m.group(3) and m.group(3) != text[m.end(4)]:
            continue  # mixed separators 415-555.2671
        if m.group(3) == " " and (not has_context(text, m.start(), "PHONE", window=30)
                                   or re.match(r" \d", text[m.end() : m.end() + 2])):
            continue  # "415 555 2671" is any three groups of digits unless a phone word precedes it
        yield PiiSpan("PHONE", m.start(), m.end(), m.group(), score_with_context(text, m.start(), "PHONE", 0.7))
    # bare and national forms only after "phone", "call", "tel", "my number is", ...: search near those words
    for lo, hi in context_windows(text, "PHONE", window=48):
        for m in _search_not_after(_NANP_BARE, text, _FREE_BARE, lo, hi):
            if has_context(text, m.start(), "PHONE", window=30):
                yield PiiSpan("PHONE", m.start(), m.end(), m.group(), 0.75)
        for m in _search_not_after(_NATIONAL, text, _FREE_NATIONAL, lo, hi):
            digits = sum(c.isdigit() for c in m.group())
            if 8 <= digits <= 12 and not _is_date(m.group()) and has_context(text, m.start(), "PHONE", window=48):
                yield PiiSpan("PHONE", m.start(), m.end(), m.group(), 0.75)


def _is_date(value: str) -> bool:
    """A real calendar date written with separators ("call back on 12/05/2024" is a date, not a phone)."""
    m = DATE_PATTERN.fullmatch(value)
    return m is not None and parse_date(m) is not None


_IPV4 = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?![\w]|\.\d)")
_FREE_IP4 = _not_after("_.")
# the embedded-IPv4 tail is tried first: "::ffff:192.168.1.1" must not stop at "::ffff:192"; up to 8 "hex:"
# repeats, for the forms "1:2:3:4:5:6:7::" and "::2:3:4:5:6:7:8"
_IPV6 = re.compile(r"(?:[0-9A-Fa-f]{0,4}:){2,8}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?(?![\w:])")
_HEX_COLON = frozenset("0123456789abcdefABCDEF:")


def ipv4_valid(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(
        p.isdigit() and len(p) <= 3 and int(p) <= 255 and (p == "0" or not p.startswith("0")) for p in parts
    )


def ipv6_valid(text: str) -> bool:
    """RFC 4291 section 2.2 text forms."""
    if text.count("::") > 1:
        return False
    head, sep, tail = text.partition("::")
    groups = [g for g in (head.split(":") if head else [])] + [g for g in (tail.split(":") if tail else [])]
    if not sep and (not head or text.startswith(":") or text.endswith(":")):
        return False
    width = 8
    if groups and "." in groups[-1]:
        if not ipv4_valid(groups[-1]):
            return False
        groups, width = groups[:-1], 6  # the IPv4 tail stands for two 16-bit groups
    if any(not (1 <= len(g) <= 4) or any(c not in "0123456789abcdefABCDEF" for c in g) for g in groups):
        return False
    return len(groups) < width if sep else len(groups) == width


def _ipv6_candidates(text: str) -> Iterator[re.Match[str]]:
    """IPv6 matches, tried only where two colons sit within five characters of each other (speed)."""
    n, pos = len(text), text.find(":")
    run_lo = run_hi = tried = -1  # the last colon run walked back over; the last start tried
    while 0 <= pos < n - 1:
        nxt = text.find(":", pos + 1, pos + 6)
        if nxt < 0:
            pos = text.find(":", pos + 1)
            continue
        k = pos
        while k > 0 and pos - k < 4 and text[k - 1] in _HEX_COLON:
            k -= 1
        # walk back to the start of a colon run; a run already walked is jumped over, else a long run of
        # ':' is rewalked at every colon in it (quadratic)
        hi = k
        while k > 0 and text[k - 1] == ":":
            if run_lo < k <= run_hi:
                k = run_lo
                break
            k -= 1
        if k < hi:
            run_lo, run_hi = k, max(hi, run_hi) if k == run_lo else hi
        m = None
        if k != tried and (k == 0 or not (text[k - 1].isalnum() or text[k - 1] in "_:.")):
            tried = k  # the same start gives the same (failed) match
            m = _IPV6.match(text, k)
        if m is not None:
            yield m
            pos = text.find(":", m.end())
        else:
            pos = nxt


def _ipv4_matches(text: str) -> Iterator[re.Match[str]]:
    """`search_free(_IPV4, text, _FREE_IP4)`. On ASCII text a free match starts the text or follows a "p" in
    the class string (see `classes.ip_classes`), so only those starts are tried."""
    cls = ip_classes(text)
    if cls is None:
        yield from search_free(_IPV4, text, _FREE_IP4)
        return
    starts = find_all(cls, (b"p0.0", b"p00.0", b"p000.0"), offset=1)
    if cls[:1] == b"0":
        starts.insert(0, 0)
    done = 0
    for s in starts:
        if s < done:
            continue
        m = _IPV4.match(text, s)
        if m is not None and _FREE_IP4(text, s, m.end()):
            done = m.end()
            yield m


def find_ips(text: str) -> Iterator[PiiSpan]:
    for m in _ipv4_matches(text):
        if ipv4_valid(m.group()):
            yield PiiSpan("IP_ADDRESS", m.start(), m.end(), m.group(),
                          score_with_context(text, m.start(), "IP_ADDRESS", 0.8))
    for m in _ipv6_candidates(text):
        value, end = m.group(), m.end()
        if value.endswith(":") and not ipv6_valid(value) and ipv6_valid(value[:-1]):
            value, end = value[:-1], end - 1  # "bound to fe80::1: retrying": the last colon is punctuation
        if value.count(":") >= 2 and ipv6_valid(value) and any(c.isalnum() for c in value):
            if re.fullmatch(r"\d{1,2}:\d{2}(?::\d{2})?", value):
                continue  # a clock time
            yield PiiSpan("IP_ADDRESS", m.start(), end, value,
                          score_with_context(text, m.start(), "IP_ADDRESS", 0.85))


_MONTHS = "january february march april may june july august september october november december".split()
_MON = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
DATE_PATTERN = re.compile(
    r"(?<![\w/.-])(?:(?P<iy>\d{4})-(?P<im>\d{2})-(?P<id>\d{2})"
    r"|(?P<a>\d{1,2})(?P<s>[/.-])(?P<b>\d{1,2})(?P=s)(?P<y>\d{4}|\d{2})"
    r"|(?P<nm>" + _MON + r")\s+(?P<nd>\d{1,2})(?:st|nd|rd|th)?,?\s+(?P<ny>\d{4})"
    r"|(?P<dd>\d{1,2})(?:st|nd|rd|th)?\s+(?P<dm>" + _MON + r"),?\s+(?P<dy>\d{4}))(?![\w/]|[.-]\d)",
    re.IGNORECASE,
)


def _month(name: str) -> int:
    name = name.lower().rstrip(".")
    return next(i + 1 for i, full in enumerate(_MONTHS) if full.startswith(name[:3]))


def parse_date(m: re.Match[str]) -> dt.date | None:
    """The calendar date a `DATE_PATTERN` match denotes (US month/day first when ambiguous), or None."""
    try:
        if m.group("iy"):
            return dt.date(int(m.group("iy")), int(m.group("im")), int(m.group("id")))
        if m.group("y"):
            a, b, y = int(m.group("a")), int(m.group("b")), int(m.group("y"))
            if len(m.group("y")) == 2:  # "1/5/85": the most recent past year with those two digits
                y += 2000 if 2000 + y <= dt.date.today().year else 1900
            if m.group("s") == "." or a > 12:  # dotted dates and day > 12 are day-first
                a, b = b, a
            return dt.date(y, a, b)
        if m.group("ny"):
            return dt.date(int(m.group("ny")), _month(m.group("nm")), int(m.group("nd")))
        return dt.date(int(m.group("dy")), _month(m.group("dm")), int(m.group("dd")))
    except (ValueError, StopIteration):
        return None


def _birth_date_at(text: str, start: int, end: int) -> PiiSpan | None:
    """``text[start:end]`` as a DATE_OF_BIRTH span: a whole `DATE_PATTERN` date from 1900 up to yesterday."""
    m = DATE_PATTERN.fullmatch(text, start, end)
    if m is None or (end < len(text) and (text[end].isalnum() or text[end] == "/")):
        return None
    date = parse_date(m)
    if date is None or not (dt.date(1900, 1, 1) <= date < dt.date.today()):
        return None
    return PiiSpan("DATE_OF_BIRTH", start, end, m.group(), 0.85)


def find_dates_of_birth(text: str) -> Iterator[PiiSpan]:
    """Dates of birth: a date with a birth label before it ("DOB: 05/12/1985"), after it ("05/12/1985 (date of
    birth)") or heading its table column ("name,dob\nAnn,1985-05-12")."""
    hits = label_hits(text, CONTEXT_WORDS["DATE_OF_BIRTH"])
    if not hits:
        return
    seen: set[int] = set()  # starts already tried (regions overlap) or reported
    for m in (m for lo, hi in context_windows(text, "DATE_OF_BIRTH", window=30, hits=hits)
              for m in DATE_PATTERN.finditer(text, lo, hi)):
        if m.start() in seen:
            continue
        seen.add(m.start())
        date = parse_date(m)
        if date is None or not (dt.date(1900, 1, 1) <= date < dt.date.today()):
            continue
        if label_or_context_before(text, hits, m.start(), "DATE_OF_BIRTH", window=30):
            yield PiiSpan("DATE_OF_BIRTH", m.start(), m.end(), m.group(), 0.85)
    for start, end in [*values_before_labels(text, hits, DATE_PATTERN.pattern, flags=re.IGNORECASE),
                       *labelled_cells(text, hits)]:
        if (span := _birth_date_at(text, start, end)) is not None:
            yield span  # a date also reported above is the same span: `resolve_overlaps` keeps one
