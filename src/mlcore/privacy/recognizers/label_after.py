"""A label after its value: "123 45 6789 (SSN)", "20-00-00 is my sort code" (see :func:`values_before_labels`).

The kinds reported only with their label (``context.py``) also accept one that follows them; the rules and
the guards against prose are in the comment below."""

from __future__ import annotations

import re

# ---------------------------------------------------------------------------------------------------------
# A label after the value: "123 45 6789 (SSN)", "20-00-00 is my sort code", "12345678 - account number".
#
# The kinds that are reported only with their label (loose SSNs, sort codes, account and routing numbers,
# SINs, loose NINOs, passports, dates of birth) are read with a label that *follows* them too, joined to it by
# one of three links:
#
# - a bracket: "123456789 (SSN)", "[sort code]";
# - a verb, then at most one determiner: "is my SSN", "was the account number", "as the routing number";
# - blanks or one punctuation mark: "123456789 SSN", "20-00-00 - sort code", "12345678, acct".
#
# Guards against prose: the label (with its noun, "number", "no.") must end its noun phrase, so "over
# 1000000 account holders" and "1000000 was the account balance" are not account numbers: a clause or a
# bracket closes after it, or a preposition or "and" follows ("12345678 is my account number at Barclays").
# A label that introduces a value of its own ("123456789 SSN: 987654321", "... SSN is 987...") belongs to
# that value and is not read backwards.
# ---------------------------------------------------------------------------------------------------------

_MARKS = r"[*_`\"']{0,2}"  # markdown emphasis, code ticks or quotes closing the value
_AFTER_LINK = re.compile(
    _MARKS + r"[ \t]*(?:[(\[][ \t]*"
    r"|(?i:is|was|are|being|as)[ \t]+(?:(?i:my|our|his|her|their|your|the|a|an|its)[ \t]+)?"
    r"|(?:[-\u2013\u2014:,=][ \t]*)?)\Z"
)
# what must follow a label read backwards: the end of its noun phrase
_LABEL_END = re.compile(r"[ \t]*(?:[.,;:!?)\]\"'*`|]|\r?\n|\Z|(?i:at|with|for|in|on|from|and|of|to|please|thanks?)\b)")
# a label that opens a value of its own ("SSN: 987...", "account no. 1234...", "sort code is 20-...")
_LABEL_OPENS = re.compile(r"[ \t]*(?:[:=#][ \t]*|(?i:is)[ \t]+)?[\"']?[0-9]")
# the noun a label word may carry ("social security number", "sort code no.", "account #")
_LABEL_TAIL = re.compile(r"(?:[ \t]*(?i:numbers?|num|no\.?|nr\.?|#)(?![A-Za-z0-9]))?")
_BEFORE_LABEL: dict[tuple[str, int], re.Pattern[str]] = {}
_DIGIT = re.compile(r"[0-9]")


def values_before_labels(text: str, hits: list[tuple[int, int]], value: str, *, flags: int = 0,
                         reach: int = 40) -> list[tuple[int, int]]:
    """Spans ``(start, end)`` of the values (matches of the regex source `value`, which must hold a digit: all
    these kinds do) that a label occurrence in `hits` (`label_hits` of the kind's label words) follows, joined
    as described above. The value must start at most `reach` characters before its label. The caller
    validates each span (checksum, shape, the characters around it) as it would a value found after its label.

    Each label costs one search of the `reach` characters before it, so the time is linear in the text."""
    key = (value, flags)
    pattern = _BEFORE_LABEL.get(key)
    if pattern is None:  # the value, then the link up to the label: searched with `endpos` at the label
        pattern = _BEFORE_LABEL[key] = re.compile(r"(?P<value>" + value + r")" + _AFTER_LINK.pattern, flags)
    spans: list[tuple[int, int]] = []
    seen: set[int] = set()
    for s, e in hits:
        e = _LABEL_TAIL.match(text, e).end()
        if (_LABEL_OPENS.match(text, e) or not _LABEL_END.match(text, e)
                or not _DIGIT.search(text, max(0, s - reach), s)):
            continue
        pos = max(0, s - reach)
        while (m := pattern.search(text, pos, s)) is not None:
            pos = m.start() + 1  # every start: the caller may reject one (inside a longer number) and want the next
            if m.start() not in seen:
                seen.add(m.start())
                spans.append(m.span("value"))
    return spans
