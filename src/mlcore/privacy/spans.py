"""A detected piece of personal data, and how overlapping detections are reconciled.

Every recognizer returns `PiiSpan(kind, start, end, text, score)` with ``text == source[start:end]``.
Recognizers run independently, so the same characters can be claimed twice (a 9-digit number that is
both a routing number and an account number; an IBAN whose digits look like a card). `resolve_overlaps`
keeps a set of non-overlapping spans by the rule used in Presidio and most NER decoders: the higher
score wins, then the longer span, then the earlier one.

A span's `repr` never shows the matched characters, so logging a span cannot leak what it found.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

KINDS = (
    "CARD",
    "SSN",
    "ITIN",
    "IBAN",
    "ABA_ROUTING",
    "ACCOUNT_NUMBER",
    "EMAIL",
    "PHONE",
    "IP_ADDRESS",
    "DATE_OF_BIRTH",
    "SECRET",
    "CARD_CVV",
    "CARD_EXPIRY",
    "UK_SORT_CODE",
    "UK_NINO",
    "CA_SIN",
    "PASSPORT",
    "PERSON",  # only with the optional encoder recognizer (mlcore.privacy.recognizers.ner)
    "ADDRESS",
)


@dataclass(frozen=True, init=False)
class PiiSpan:
    """One detection: ``source[start:end] == text`` is a value of `kind`, with confidence `score` in [0, 1]."""

    kind: str
    start: int
    end: int
    text: str
    score: float

    def __init__(self, kind: str, start: int, end: int, text: str, score: float) -> None:
        # The generated __init__ of a frozen dataclass sets each field through object.__setattr__; detect_pii
        # makes thousands of spans per call, and one update of the instance dict (which the frozen
        # __setattr__ does not guard) sets the same fields about three times faster.
        self.__dict__.update(kind=kind, start=start, end=end, text=text, score=score)

    def __len__(self) -> int:
        return self.end - self.start

    def overlaps(self, other: PiiSpan) -> bool:
        return self.start < other.end and other.start < self.end

    def shifted(self, offset: int) -> PiiSpan:
        """The same span with offsets moved by `offset` (used when scanning a window of a larger text)."""
        return PiiSpan(self.kind, self.start + offset, self.end + offset, self.text, self.score)

    def __repr__(self) -> str:  # never print the value itself
        return (
            f"PiiSpan(kind={self.kind!r}, start={self.start}, end={self.end}, "
            f"text=<{len(self.text)} chars>, score={self.score:.2f})"
        )

    __str__ = __repr__


def resolve_overlaps(spans: Iterable[PiiSpan]) -> list[PiiSpan]:
    """Greedy non-overlapping selection: higher score, then longer, then earlier wins. Sorted by start.

    Spans that overlap nothing are kept as they are; the greedy rule runs on each group of spans chained by
    overlaps (a choice in one group never touches another), so the common case is one sort by start."""
    try:
        by_start = sorted(spans, key=_start)
    except AttributeError as e:  # checked on failure only: detect_pii calls this on every scan
        raise TypeError(f"spans must contain PiiSpan objects (as detect_pii returns), not others: {e}") from None
    out: list[PiiSpan] = []
    k, n = 0, len(by_start)
    while k < n:
        j, reach = k + 1, by_start[k].end
        while j < n and by_start[j].start < reach:
            reach = max(reach, by_start[j].end)
            j += 1
        if j == k + 1:
            out.append(by_start[k])
        else:
            out.extend(_greedy(by_start[k:j]))
        k = j
    return out


def _start(span: PiiSpan) -> int:
    return span.start


def _greedy(spans: Iterable[PiiSpan]) -> list[PiiSpan]:
    starts: list[int] = []  # chosen spans never overlap, so sorted by start they are sorted by end too
    chosen: list[PiiSpan] = []
    for span in sorted(spans, key=lambda s: (-s.score, -(s.end - s.start), s.start)):
        i = bisect.bisect_right(starts, span.start)
        if i > 0 and chosen[i - 1].end > span.start:
            continue  # overlaps the chosen span on its left
        if i < len(chosen) and chosen[i].start < span.end:
            continue  # overlaps the chosen span on its right
        starts.insert(i, span.start)
        chosen.insert(i, span)
    return chosen


def replace_spans(text: str, spans: Iterable[PiiSpan], replace, *, offset: int = 0) -> str:
    """`text` with each span (non-overlapping, offsets relative to ``text`` + `offset`) replaced by
    ``replace(span)``; parts of spans outside `text` are clipped."""
    out, pos = [], 0
    for span in sorted(spans, key=lambda s: s.start):
        start, end = max(span.start - offset, pos), min(span.end - offset, len(text))
        if end <= start:
            continue
        out.append(text[pos:start])
        out.append(replace(span))
        pos = end
    out.append(text[pos:])
    return "".join(out)


def stream_through(chunks: Iterable[str], feed: Callable[[str], str], finish: Callable[[], str]) -> Iterator[str]:
    """Drive an incremental text filter (feed each chunk, then finish) and yield its non-empty outputs."""
    for chunk in chunks:
        out = feed(chunk)
        if out:
            yield out
    tail = finish()
    if tail:
        yield tail
