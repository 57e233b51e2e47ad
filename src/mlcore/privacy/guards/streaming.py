"""Scanning text that arrives in pieces: a hold-back window so nothing is emitted raw before it is checked.

A streamed generation can deliver "4111 11", "11 1111 ", "1111" — no piece holds a card number, the
concatenation does. `StreamScanner` keeps the unchecked tail in a buffer and releases only a prefix that is
provably final:

1. the release point is at least `hold` characters before the end of what has arrived;
2. it is moved left off any token that could still grow (a non-space run, or a space joining two
   digit-bearing tokens, as in grouped card numbers and IBANs), off any detected span, and off an open
   ``-----BEGIN`` block;
3. the released prefix is masked with the spans found on the whole buffer, plus `context` characters of
   already-released original text so context words ("card number:") still count, and inside a table its
   header line, so a column labelled "ssn" is read as such however many rows ago it came.

Memory is bounded: when the buffer passes `max_buffer` characters the release point ignores rule 2's token
rule (a single token that long is not a value we detect), so a gigantic input streams in O(max_buffer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from mlcore.privacy.detect import (
    MASK_MIN_SCORE,
    RECOGNIZERS,
    Recognizer,
    check_kinds,
    check_min_score,
    check_positive_int,
    check_recognizers,
    check_text,
    detect_pii,
)
from mlcore.privacy.recognizers.table_labels import table_context
from mlcore.privacy.spans import PiiSpan, replace_spans


def _joins(text: str, i: int) -> bool:
    """Would cutting between text[i-1] and text[i] split something that may be one value?"""
    if i <= 0 or i >= len(text):
        return False
    a, b = text[i - 1], text[i]
    if not a.isspace() and not b.isspace():
        return True
    if a in " -" and i >= 2 and text[i - 2].isalnum() and b.isalnum():
        return True  # "4111 |1111": a grouped number
    if b in " -" and i + 1 < len(text) and text[i + 1].isalnum() and a.isalnum():
        return True
    return False


class StreamScanner:
    """Incremental masking. ``feed(chunk) -> str`` returns text that is safe to emit now; ``flush()`` the rest.

    Args:
        replace: ``span -> replacement`` (see `mlcore.privacy.transforms.masking.make_replacer`).
        hold: characters always held back at the end of the buffer.
        context: characters of released original text kept for context words.
        max_buffer: the buffer size at which a release is forced (memory bound).
        recognizers: passed to `detect_pii` (the output guard adds a long-number rule).
    """

    def __init__(self, replace: Callable[[PiiSpan], str], *, kinds: Iterable[str] | None = None,
                 min_score: float = MASK_MIN_SCORE, hold: int = 64, context: int = 64, max_buffer: int = 1 << 16,
                 recognizers: Sequence[Recognizer] = RECOGNIZERS) -> None:
        for name, value in (("hold", hold), ("context", context), ("max_buffer", max_buffer)):
            check_positive_int(value, name, 0)
        check_min_score(min_score)
        if hold < 32:
            raise ValueError(f"hold must be at least 32 characters (the longest grouped card), got {hold}")
        if max_buffer < 4 * hold:
            raise ValueError(f"max_buffer must be at least 4 * hold = {4 * hold}, got {max_buffer}")
        self.replace, self.hold, self.context, self.max_buffer = replace, hold, context, max_buffer
        self.kinds, self.min_score, self.recognizers = check_kinds(kinds), min_score, check_recognizers(recognizers)
        self._buf = ""
        self._ctx = ""
        self._released = 0  # original characters released so far
        self.spans: list[PiiSpan] = []  # everything found, offsets in the whole stream

    def _cut(self, text: str, off: int, spans: list[PiiSpan], forced: bool) -> int:
        cut = len(text) - self.hold
        if not forced:
            while cut > off and _joins(text, cut):
                cut -= 1
            begin = text.rfind("-----BEGIN", off)
            if begin >= 0 and text.find("-----END", begin) < 0:
                cut = min(cut, begin)
        moved = True
        while moved:
            moved = False
            for s in spans:
                if s.start < cut < s.end:
                    cut, moved = s.start, True
        return max(cut, off)

    def _drain(self, final: bool) -> str:
        text, off = self._ctx + self._buf, len(self._ctx)
        spans = [s for s in detect_pii(text, kinds=self.kinds, min_score=self.min_score,
                                                  recognizers=self.recognizers) if s.end > off]
        if final:
            cut = len(text)
        else:
            cut = self._cut(text, off, spans, forced=False)
            if cut == off and len(self._buf) > self.max_buffer:
                cut = self._cut(text, off, spans, forced=True)
        released = [s for s in spans if s.start < cut]
        base = self._released - off
        self.spans.extend(s.shifted(base) for s in released)
        out = replace_spans(text[off:cut], released, self.replace, offset=off)
        self._released += cut - off
        self._ctx = self._next_context(text, cut)
        self._buf = text[cut:]
        return out

    def _next_context(self, text: str, cut: int) -> str:
        """The last `context` released characters, or inside a table the header and the split row (see
        `table_context`), so a column labelled "ssn" still labels the cells of rows that arrive long after it."""
        table = table_context(text, cut, self.context)
        return text[max(0, cut - self.context) : cut] if table is None else table

    def feed(self, chunk: str) -> str:
        """Add a chunk; return what can be released (possibly "")."""
        self._buf += check_text(chunk, "chunk")
        if len(self._buf) <= self.hold:
            return ""
        return self._drain(final=False)

    def flush(self) -> str:
        """End of stream: release everything left."""
        return self._drain(final=True) if self._buf else ""
