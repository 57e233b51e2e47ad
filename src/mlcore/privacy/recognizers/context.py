"""Context words: the words around a candidate that make a reading more (or less) likely.

A 9-digit number is nothing special; "routing number: 021000021" is. Presidio calls this context
enhancement (the LemmaContextAwareEnhancer): a recognizer's base score is raised when one of its kind's
words occurs in a window before the match. Here the window is measured in characters and the words are
matched case-insensitively at word boundaries. Some kinds are only reported *with* context
(account numbers, routing numbers, dates of birth, generic secrets); for the others context only raises
the score.

The kinds reported only with their label (loose SSNs and ITINs, sort codes, account and routing numbers,
SINs, loose NINOs, passports, dates of birth) also accept a label in two more places (round six of the audits):
after the value ("123 45 6789 (SSN)", "20-00-00 is my sort code": ``label_after.py``) and in the header
of the value's table column (CSV, TSV, ";"-separated and Markdown tables: ``table_labels.py``). Field names of
data formats are labels too: "social_security_number", "dateOfBirth", "tax_id" (`label_hits`).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator

CONTEXT_WORDS: dict[str, tuple[str, ...]] = {
    "CARD": ("card", "credit", "debit", "visa", "mastercard", "amex", "cc", "pan", "card number", "cardholder",
             "maestro", "discover", "jcb", "diners", "unionpay", "rupay", "dankort", "uatp", "elo", "mir", "troy"),
    "SSN": ("ssn", "social security", "social sec", "ss#", "ss no"),
    "ITIN": ("itin", "taxpayer", "tax id", "tin"),
    "IBAN": ("iban", "bank", "account", "transfer", "wire", "sepa"),
    "ABA_ROUTING": ("routing", "aba", "rtn", "transit", "routing number", "routing no"),
    "ACCOUNT_NUMBER": ("account", "acct", "a/c", "account number", "account no", "acc no", "checking", "savings"),
    "EMAIL": ("email", "e-mail", "mail", "contact"),
    "PHONE": ("phone", "tel", "telephone", "mobile", "cell", "call", "fax", "whatsapp", "sms", "my number",
              "number is", "reach me", "text me", "landline", "handy", "portable", "téléphone"),
    "UK_NINO": ("national insurance", "ni number", "ni no", "nino", "nin"),
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

# Letters glued to a number that say "this is an identifier, not a card" (ORD4111..., INV-4111...).
ID_PREFIXES = frozenset(
    ("ord", "order", "inv", "invoice", "po", "sku", "ref", "trk", "track", "tracking", "txn", "ticket", "serial",
     "sn", "tn", "id", "no", "nr", "tx", "req", "case", "acct", "account")
)


def letters_before(text: str, end: int) -> str:
    """The run of letters (and underscores) that ends at `end`: the word glued to a number."""
    k = end
    while k > 0 and (text[k - 1].isalpha() or text[k - 1] == "_"):
        k -= 1
    return text[k:end]


_PATTERNS: dict[tuple[str, ...], re.Pattern[str]] = {}


def _pattern(words: tuple[str, ...]) -> re.Pattern[str]:
    pattern = _PATTERNS.get(words)
    if pattern is None:
        alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
        pattern = _PATTERNS[words] = re.compile(rf"(?<![a-z0-9])(?:{alternatives})(?![a-z0-9])", re.IGNORECASE)
    return pattern


_LITERALS: dict[str, re.Pattern[str]] = {}
_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


def lowered(text: str) -> str:
    """`text.lower()` with one character per character (the few characters whose lowercase is longer, such as
    "İ", are kept as they are), so offsets into the result are offsets into `text`."""
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


def keyword_hits(text: str, words: tuple[str, ...], low: str | None = None) -> Iterator[tuple[int, int]]:
    """(start, end) of each whole-word, case-insensitive occurrence of one of `words` in `text`.

    Speed: the scan is a plain literal alternation over the lowercased text, which the regex engine runs
    with its literal-prefix search; a leading look-behind or IGNORECASE would make it try a full match at
    every position instead (about 10x slower). Word boundaries are checked per hit."""
    key = "\x00".join(words)
    if key not in _LITERALS:
        _LITERALS[key] = re.compile("|".join(re.escape(w.lower()) for w in sorted(words, key=len, reverse=True)))
    low = lowered(text) if low is None else low
    n = len(low)
    for s, e in literal_spans(low, words, _LITERALS[key]):
        if (s > 0 and low[s - 1] in _WORD_CHARS and low[s] in _WORD_CHARS) or (
                e < n and low[e] in _WORD_CHARS and low[e - 1] in _WORD_CHARS):
            continue
        yield s, e


def literal_spans(low: str, words: tuple[str, ...], pattern: re.Pattern[str]) -> list[tuple[int, int]]:
    """The spans `pattern.finditer(low)` yields for the alternation of `words`: at the leftmost position where
    a word occurs, the longest word there, then on from its end. When the words start with different letters
    the engine tries a match at each of those letters (most of the text); instead, every occurrence of every
    word is found by one scan per first letter (`_first_letter_scans`) and a merge of the sorted occurrences
    gives the same spans several times faster."""
    one_letter = _ONE_FIRST_LETTER.get(words)
    if one_letter is None:  # cached: on the short texts a stream scanner checks, this set cost a third of the call
        one_letter = _ONE_FIRST_LETTER[words] = len({w[:1].lower() for w in words}) <= 1
    if one_letter:
        return [m.span() for m in pattern.finditer(low)]
    found = []
    for scan, roots in _first_letter_scans(words):
        for k in (m.start() for m in scan.finditer(low)):
            # roots never start with one another, so exactly one of this letter's roots starts at k
            root, longer = roots[0] if len(roots) == 1 else next(r for r in roots if low.startswith(r[0], k))
            found.append((k, -len(root)))
            found.extend((k, -len(w)) for w in longer if low.startswith(w, k))
    found.sort()
    spans, end = [], 0
    for k, minus_len in found:
        if k >= end:
            end = k - minus_len
            spans.append((k, end))
    return spans


_ONE_FIRST_LETTER: dict[tuple[str, ...], bool] = {}


def _first_letter_scans(words: tuple[str, ...]) -> list[tuple[re.Pattern[str], list[tuple[str, tuple[str, ...]]]]]:
    """`_roots(words)` grouped by first letter, each group with a pattern that matches that letter where one
    of the group's roots starts (``c(?=c|ard|redit)``): its leading literal is found at C speed, and a
    one-character match finds occurrences next to each other too. Cheaper than a `str.find` loop per root."""
    if words not in _SCANS:
        groups: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
        for root, longer in _roots(words):
            groups.setdefault(root[0], []).append((root, longer))
        _SCANS[words] = [(re.compile(re.escape(first) + "(?=" + "|".join(re.escape(r[1:]) for r, _ in roots) + ")"),
                          roots) for first, roots in groups.items()]
    return _SCANS[words]


_SCANS: dict[tuple[str, ...], list[tuple[re.Pattern[str], list[tuple[str, tuple[str, ...]]]]]] = {}


def _roots(words: tuple[str, ...]) -> list[tuple[str, tuple[str, ...]]]:
    """The lowercased `words` as (root, longer words starting with it): a word whose prefix is another word
    ("card number" after "card") is looked for only where its root occurs."""
    if words not in _ROOTS:
        low = sorted({w.lower() for w in words if w}, key=len)
        roots: dict[str, list[str]] = {}
        for w in low:
            root = next((r for r in roots if w.startswith(r)), None)
            roots.setdefault(w, []) if root is None else roots[root].append(w)
        _ROOTS[words] = [(r, tuple(longer)) for r, longer in roots.items()]
    return _ROOTS[words]


_ROOTS: dict[tuple[str, ...], list[tuple[str, tuple[str, ...]]]] = {}


def context_windows(text: str, kind: str, *, window: int = 40, reach: int = 64,
                    words: tuple[str, ...] | None = None, low: str | None = None,
                    hits: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """Merged regions ``(pos, endpos)`` that hold every value a `kind` context word precedes by at most
    `window` characters (values up to `reach` characters long): a recognizer that needs context searches only
    these, then confirms each hit with `has_context`. `hits`: the words' `keyword_hits`, if already found."""
    words = CONTEXT_WORDS.get(kind, ()) if words is None else words
    regions: list[tuple[int, int]] = []
    for s, e in (keyword_hits(text, words, low) if hits is None else hits):
        lo, hi = e, min(len(text), s + window + reach)
        if regions and lo <= regions[-1][1]:
            regions[-1] = (regions[-1][0], max(hi, regions[-1][1]))
        else:
            regions.append((lo, hi))
    return regions


def keyword_regions(text: str, words: tuple[str, ...], *, reach: int = 48,
                    hits: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """Merged regions from each whole-word occurrence of one of `words` to `reach` characters past it: a
    recognizer whose pattern starts with those words ("sort code 20-00-00") runs it only there. `hits`: the
    words' `keyword_hits`, if already found."""
    regions: list[tuple[int, int]] = []
    for s, e in (keyword_hits(text, words) if hits is None else hits):
        hi = min(len(text), e + reach)
        if regions and s <= regions[-1][1]:
            regions[-1] = (regions[-1][0], max(hi, regions[-1][1]))
        else:
            regions.append((s, hi))
    return regions


def search_free(pattern: re.Pattern[str], text: str, free, pos: int = 0, endpos: int | None = None
                ) -> Iterator[re.Match[str]]:
    """`pattern.finditer`, with a boundary test `free(text, start, end)` done in Python instead of a leading
    look-behind (which disables the engine's prefix search). A rejected match resumes the search one character
    after its start, as the look-behind would have."""
    endpos = len(text) if endpos is None else endpos
    m = pattern.search(text, pos, endpos)
    while m is not None:
        if free(text, m.start(), m.end()):
            yield m
            m = pattern.search(text, max(m.end(), m.start() + 1), endpos)
        else:
            m = pattern.search(text, m.start() + 1, endpos)


_CLAUSE_BREAKS = ("\n", ";", "|", ". ")


_ABBREVIATIONS = frozenset(("no", "nr", "tel", "acct", "acc", "num", "ph", "ref", "approx", "dept", "st", "mr", "ms",
                            "dr", "d.o.b", "dob", "e.g", "i.e", "vs", "ext"))


def _after_abbreviation(text: str, k: int) -> bool:
    """True if the word ending at `k` is in `_ABBREVIATIONS`, read with its inner dots ("D.O.B", "e.g"):
    `letters_before` alone stops at the last dot and sees only "B"."""
    j = k
    while j > 0 and (text[j - 1].isalpha() or text[j - 1] in "._"):
        j -= 1
    return (letters_before(text, k).lower() in _ABBREVIATIONS
            or text[j:k].lstrip(".").lower() in _ABBREVIATIONS)


# What may sit between a clause break and a value that opens its line or table cell: blanks and the marks of
# a label ("Routing number:\n**021000021**", "| SSN | 123456789 |").
_LABEL_GAP = " \t\r:#=*"


def _clause_start(text: str, lo: int, end: int) -> tuple[int, int]:
    """(start of the clause that ends at `end`, clipped to `lo`; index of the break before it, or -1)."""
    clause, at = lo, -1
    for brk in _CLAUSE_BREAKS:
        k = text.rfind(brk, lo, end)
        while brk == ". " and k >= lo and _after_abbreviation(text, k):
            k = text.rfind(brk, lo, k)
        if k >= 0 and k + len(brk) > clause:
            clause, at = k + len(brk), k
    return clause, at


def _window_start(text: str, start: int, window: int) -> int:
    """Start of the look-back window, clipped at the last clause break (newline, ';', '|', '. '); a '. '
    after an abbreviation ("routing no. 0210...", "tel. 555...") does not end a clause. A value that opens
    its line or table cell is read with the clause before the break, which labels it: a form's
    "Routing number:\n021000021" and a table's "| Routing number | 021000021 |" (a blank line still cuts)."""
    lo = max(0, start - window)
    clause, brk = _clause_start(text, lo, start)
    if brk > lo and not text[clause:start].strip(_LABEL_GAP):
        clause = _clause_start(text, lo, brk)[0]
    return clause


def has_context(text: str, start: int, kind: str, *, window: int = 40, words: tuple[str, ...] | None = None) -> bool:
    """True if one of `kind`'s context words appears in ``text[start - window : start]`` within the same clause."""
    words = CONTEXT_WORDS.get(kind, ()) if words is None else words
    return bool(words) and _word_before(text, start, words, window)


def _word_before(text: str, start: int, words: tuple[str, ...], window: int) -> bool:
    """True if one of `words` occurs as a whole word (case-insensitively) in the clause that ends at `start`,
    at most `window` characters back: ``_pattern(words).search(text, _window_start(...), start)``.

    Speed: most calls find no word at all, and most text is ASCII. On an ASCII window the same test runs on
    the lowercased window with a pattern free of IGNORECASE and of the leading look-behind (either would make
    the engine try every position; see `keyword_hits`): the look-behind is checked per hit, and a rejected
    hit resumes the search one character after its start, as the look-behind would have. Only when a word is
    there is the clause start looked for. (Unicode case folding lets the regex match "ſsn" for "ssn", which
    `str.lower` does not: a window that is not ASCII takes the regex itself.)"""
    lo = max(0, start - window)
    first = max(0, lo - 1)  # one character more: the look-behind sees the character before a word
    segment = text[first:start]
    if not segment.isascii():
        return _pattern(words).search(text, _window_start(text, start, window), start) is not None
    scan = _LOWER_SCANS.get(words)
    if scan is None:
        alternatives = "|".join(re.escape(w.lower()) for w in sorted(words, key=len, reverse=True))
        scan = _LOWER_SCANS[words] = re.compile(rf"(?:{alternatives})(?![a-z0-9])")
    low = segment.lower()
    hit = _free_word(scan, low, lo - first)
    if hit < 0:
        return False
    clause = _window_start(text, start, window)
    return hit + first >= clause or _free_word(scan, low, clause - first) >= 0


def _free_word(scan: re.Pattern[str], low: str, pos: int) -> int:
    """Start of the first `scan` match in `low` at or after `pos` that no letter or digit precedes, or -1."""
    m = scan.search(low, pos)
    while m is not None:
        k = m.start()
        if k == 0 or low[k - 1] not in _WORD_CHARS:
            return k
        m = scan.search(low, k + 1)
    return -1


_LOWER_SCANS: dict[tuple[str, ...], re.Pattern[str]] = {}


def has_negative_context(text: str, start: int, kind: str, *, window: int = 16) -> bool:
    """True if a word arguing against `kind` sits just before the match (e.g. "version" before an IP)."""
    words = NEGATIVE_WORDS.get(kind, ())
    return bool(words) and _word_before(text, start, words, window)


def score_with_context(text: str, start: int, kind: str, base: float, *, boost: float = 0.1,
                       window: int = 40) -> float:
    """`base` raised by `boost` when a context word precedes the match, lowered when a negative word does."""
    score = base
    if has_context(text, start, kind, window=window):
        score += boost
    elif has_negative_context(text, start, kind):  # a positive word outweighs a negative one
        score -= 0.5
    return round(max(0.0, min(1.0, score)), 6)


_LABEL_FORMS: dict[tuple[str, ...], tuple[tuple[str, ...], re.Pattern[str], frozenset[str], int]] = {}


def label_hits(text: str, words: tuple[str, ...]) -> list[tuple[int, int]]:
    """(start, end) of each occurrence of one of `words` as a label, as `keyword_hits` finds them in prose and
    also as the field names of data formats: a multi-word label joined by "_" or "-" or written as one word
    ("social_security_number", "tax_id", "date-of-birth", "sortcode"), which may start or end at a camelCase
    boundary ("socialSecurityNumber", "customerSSN", "routingNumber" in JSON, XML, YAML, query strings and
    key=value logs). Sorted by start, non-overlapping; every `keyword_hits` occurrence is one or lies in one.

    (The joined forms are added to the word list rather than "_" and "-" replaced in the text: the scan costs
    the same per first letter, and two replacements of the whole text do not come free.)"""
    forms = _LABEL_FORMS.get(words)
    if forms is None:
        joined = tuple(dict.fromkeys((*words, *(w.replace(" ", j) for w in words if " " in w for j in ("_", "-", "")))))
        alternatives = "|".join(re.escape(w.lower()) for w in sorted(joined, key=len, reverse=True))
        added = frozenset(w.lower() for w in joined) - {w.lower() for w in words}
        forms = _LABEL_FORMS[words] = (joined, re.compile(alternatives), added, max(map(len, joined)))
    joined, pattern, added, longest = forms
    low = lowered(text)
    n, hits = len(low), []
    for s, e in literal_spans(low, joined, pattern):
        if hits and s < hits[-1][1]:
            continue  # inside a word a rejected joined form gave back (below)
        if (s > 0 and low[s - 1] in _WORD_CHARS and low[s] in _WORD_CHARS and not _camel(text, s)) or (
                e < n and low[e] in _WORD_CHARS and low[e - 1] in _WORD_CHARS and not _camel(text, e)):
            if low[s:e] in added:
                # a rejected joined form ("date-of-birthday") must not hide the prose words inside it
                a, b = max(0, s - 1), min(n, e + longest + 1)
                hits.extend((a + hs, a + he) for hs, he in keyword_hits(text[a:b], words, low[a:b])
                            if s <= a + hs < e and a + he < b)
            continue
        hits.append((s, e))
    return hits


def _camel(text: str, k: int) -> bool:
    """True at a camelCase word boundary: a lower-case letter, then an upper-case one at `k`."""
    return text[k].isupper() and text[k - 1].islower()


def label_before(text: str, hits: list[tuple[int, int]], start: int, window: int = 40) -> bool:
    """`has_context` for label occurrences already found (`label_hits`): True if one lies wholly in the clause
    that ends at `start`, at most `window` characters back. Only the last label that ends by `start` needs
    the clause test: `hits` are sorted and do not overlap, so any other one starts earlier still."""
    j = bisect.bisect_left(hits, (start,)) - 1
    while j >= 0 and hits[j][1] > start:
        j -= 1
    return j >= 0 and hits[j][0] >= start - window and hits[j][0] >= _window_start(text, start, window)


def label_or_context_before(text: str, hits: list[tuple[int, int]], start: int, kind: str, *, window: int = 40,
                            words: tuple[str, ...] | None = None) -> bool:
    """`label_before`, or `has_context` where the window is not ASCII (its regex folds Unicode case: "ſsn"
    reads as "ssn", which `str.lower` does not): every label `has_context` sees, plus field names."""
    return label_before(text, hits, start, window) or (
        not text[max(0, start - window - 1) : start].isascii() and has_context(text, start, kind, window=window,
                                                                               words=words))
