"""Input sanitization and output guardrails around a language model.

They look alike (scan text, decide) but answer different questions, and so act differently:

- `scan_input(prompt)` runs *before* the prompt leaves your perimeter (a hosted model, a log, a vector
  store). Question: "may this reach the model?" Personal data is **replaced** (redacted, or pseudonymised
  with a key so the model can still refer to "the card" consistently), credentials are replaced too (a
  pasted API key must never reach a third party), and prompt-injection attempts and blocklisted terms
  **block** the request. The sanitised prompt is what you send.
- `scan_output(text)` runs *after* generation, before the user (or a tool) sees it. Question: "did the model
  leak something?" A credential in an answer **blocks** it (it can only come from training data or context
  that should not be exposed); personal data the user did not supply is **redacted**; values the user gave
  in the prompt may be echoed (``allowed=``). The output side is also *stricter*: a model that memorised
  a card can emit it slightly off-format ("4556 7375 8689 9640046"), which no validating recognizer
  accepts, so any run of more than `max_digits` digits is redacted as ``[LONG_NUMBER]`` as well. Generations arrive as streamed chunks, so `OutputGuard`
  applies the same check incrementally, holding back a tail so a card split over chunks is never emitted raw.

Injection is scored by `guards.injection` (intent rules over normalised and decoded readings of the prompt;
see its docstring and the held-out rates in `guards.data.eval_set`). With a `Vault`, ``scan_input(...,
strategy="pseudonym", vault=v)`` records every pseudonym, the output guards let those pseudonyms through and
reveal the real values (``scan_output(..., vault=v)``, ``OutputGuard(vault=v)``). `allowlist` names the
operator's own published values (a 1-800 support line) that are never redacted as leaks, and a run of years
("2019 2020 2021 2022") is not a long number.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from mlcore.privacy.detect import (
    MASK_MIN_SCORE,
    RECOGNIZERS,
    Recognizer,
    ascii_form,
    check_positive_int,
    check_str_list,
    check_text,
    detect_pii,
)
from mlcore.privacy.guards.injection import detect_injection
from mlcore.privacy.guards.injection import injection_score as injection_score  # re-exported
from mlcore.privacy.guards.streaming import StreamScanner
from mlcore.privacy.keys import normalise
from mlcore.privacy.recognizers.cards import DASHES
from mlcore.privacy.spans import PiiSpan, replace_spans, stream_through
from mlcore.privacy.transforms.masking import make_replacer
from mlcore.privacy.transforms.vault import Vault

ALLOW, REDACT, BLOCK = "allow", "redact", "block"
_RANK = {ALLOW: 0, REDACT: 1, BLOCK: 2}
WITHHELD = "[response withheld by the output guardrail]"

def long_number_recognizer(max_digits: int) -> Recognizer:
    """Flags runs of more than `max_digits` digits (single spaces or dashes allowed between them, with the
    card recognizer's separator set: tabs, full-width, Unicode dashes), except a run of separated years
    ("2019 2020 2021 2022"), which is a list, not a number."""
    check_positive_int(max_digits, "max_digits", 4)
    pattern = re.compile(r"(?<!\d)\d(?:[" + re.escape(_SEPARATORS) + r"]?\d){" + str(max_digits) + r",}(?!\d)")

    def find_long_numbers(text: str) -> Iterator[PiiSpan]:
        for m in pattern.finditer(text):
            if _YEARS.fullmatch(m.group()):
                continue
            yield PiiSpan("LONG_NUMBER", m.start(), m.end(), m.group(), 0.6)

    return find_long_numbers


_SEPARATORS = " \t\u00a0\u2007\u2009\u202f\u3000" + DASHES
_YEARS = re.compile(r"(?:1[89]|20)\d\d(?:[" + re.escape(_SEPARATORS) + r"](?:1[89]|20)\d\d)+")


def _digits(value: str) -> str:
    return "".join(c for c in value if c.isdecimal())


def _allowing(recognizers: Sequence[Recognizer], values: Iterable[str]) -> tuple[Recognizer, ...]:
    """`recognizers` that do not report `values`: a span is dropped when it lies inside a literal occurrence of
    one, or has the same normal form (same digits, for numbers of 7+ digits: "1 800 555 0199" = "1-800-555-0199")."""
    values = tuple(ascii_form(v) for v in values if v)  # recognizers see `detect_pii`'s ASCII form of the text
    if not values:
        return tuple(recognizers)
    literal = re.compile("|".join(map(re.escape, sorted(values, key=len, reverse=True))))
    digit_forms = {d for d in map(_digits, values) if len(d) >= 7}

    def allowed(span: PiiSpan, regions: list[tuple[int, int]]) -> bool:
        if any(a <= span.start and span.end <= b for a, b in regions):
            return True
        d = _digits(span.text)
        return (len(d) >= 7 and d in digit_forms) or any(normalise(span.kind, span.text) == normalise(span.kind, v)
                                                         for v in values)

    def wrap(recognize: Recognizer) -> Recognizer:
        def find(text: str) -> Iterator[PiiSpan]:
            regions = [m.span() for m in literal.finditer(text)]
            return (s for s in recognize(text) if not allowed(s, regions))
        return find

    return tuple(wrap(r) for r in recognizers)


def _output_recognizers(max_digits: int | None, allowed: Iterable[str] = ()) -> tuple[Recognizer, ...]:
    found = RECOGNIZERS if max_digits is None else (*RECOGNIZERS, long_number_recognizer(max_digits))
    return _allowing(found, allowed)


@dataclass
class ScanResult:
    """The decision on one text: `verdict` in {"allow", "redact", "block"}, why, and what is safe to pass on.

    `reasons` name kinds and rules (``"pii:CARD"``, ``"injection:ignore_instructions"``), never values; the
    repr leaves out `safe_text` (with a vault it holds the customer's revealed values).
    """

    verdict: str
    reasons: list[str] = field(default_factory=list)
    safe_text: str = field(default="", repr=False)
    spans: list[PiiSpan] = field(default_factory=list)
    injection_score: float = 0.0

    @property
    def allowed(self) -> bool:
        return self.verdict != BLOCK


def _worst(a: str, b: str) -> str:
    return a if _RANK[a] >= _RANK[b] else b


def _blocklisted(text: str, blocklist: Iterable[str]) -> list[str]:
    lowered = text.lower()
    return [term for term in blocklist if term and term.lower() in lowered]


def _reasons(spans: list[PiiSpan], prefix: str = "pii") -> list[str]:
    counts = Counter(s.kind for s in spans)
    return [f"{'secret' if k == 'SECRET' else prefix}:{k}" + (f" x{n}" if n > 1 else "") for k, n in counts.items()]


def _check_vault(vault: object) -> None:
    if vault is not None and not isinstance(vault, Vault):
        raise TypeError(f"vault must be a mlcore.privacy.Vault, got {type(vault).__name__}")


def _replacer_for_input(strategy: str, key: bytes | str | None, vault: Vault | None):
    _check_vault(vault)
    if vault is None:
        return make_replacer(strategy, key)
    if not isinstance(vault, Vault):
        raise TypeError(f"vault must be a mlcore.privacy.Vault, got {type(vault).__name__}")
    if strategy != "pseudonym":
        raise ValueError(f"vault= keeps pseudonyms: pass strategy='pseudonym', got strategy={strategy!r}")
    return vault.replace


def scan_input(
    prompt: str,
    *,
    blocklist: Iterable[str] = (),
    strategy: str = "redact",
    key: bytes | str | None = None,
    injection_threshold: float = 0.7,
    vault: Vault | None = None,
) -> ScanResult:
    """Sanitise a prompt before it reaches a model: replace PII and secrets, block injections and blocklist.

    Args:
        strategy: how PII in the prompt is replaced ("redact", "pseudonym" with `key` or `vault`, ...).
        injection_threshold: block when the combined injection score reaches this.
        vault: with strategy="pseudonym", record each pseudonym so the answer can be revealed (no `key` needed).
    """
    check_text(prompt, "prompt")
    blocklist = check_str_list(blocklist, "blocklist")
    if isinstance(injection_threshold, bool) or not isinstance(injection_threshold, int | float) or not (
            0.0 < injection_threshold <= 1.0):
        raise ValueError(f"injection_threshold must be in (0, 1], got {injection_threshold}")
    replace = _replacer_for_input(strategy, key, vault)
    spans = detect_pii(prompt, min_score=MASK_MIN_SCORE)
    verdict, reasons = ALLOW, []
    safe = prompt
    if spans:
        verdict, reasons = REDACT, _reasons(spans)
        secret = make_replacer("redact")  # a credential is never pseudonymised into the prompt
        safe = replace_spans(prompt, spans, lambda s: secret(s) if s.kind == "SECRET" else replace(s))
    report = detect_injection(prompt)
    if report.score >= injection_threshold:
        verdict = BLOCK
    reasons += [f"injection:{name}" for name in report.fired]
    reasons += [f"injection:via:{w}" for w in report.where if w not in ("text", "joined")]
    hits = _blocklisted(prompt, blocklist)
    if hits:
        verdict = BLOCK
        reasons += [f"blocklist:{term}" for term in hits]
    return ScanResult(verdict, reasons, safe, spans, report.score)


def scan_output(
    text: str,
    *,
    blocklist: Iterable[str] = (),
    allowed: Iterable[str] = (),
    strategy: str = "redact",
    key: bytes | str | None = None,
    max_digits: int | None = 12,
    allowlist: Iterable[str] = (),
    vault: Vault | None = None,
) -> ScanResult:
    """Check a generation before anyone sees it: block secrets and blocklisted terms, redact leaked PII.

    Args:
        allowed: values the user supplied themselves (e.g. their own e-mail) that may be echoed back.
        max_digits: also redact digit runs longer than this (None: off).
        allowlist: the operator's own published values (support line, bank's routing number) never redacted.
        vault: the conversation's vault; its pseudonyms pass, and `safe_text` has the real values revealed.
    """
    check_text(text)
    _check_vault(vault)
    blocklist = check_str_list(blocklist, "blocklist")
    passes = (*check_str_list(allowed, "allowed"), *check_str_list(allowlist, "allowlist"),
              *(vault.pseudonyms if vault is not None else ()))
    spans = detect_pii(text, recognizers=_output_recognizers(max_digits, passes), min_score=MASK_MIN_SCORE)
    replace = make_replacer(strategy, key)
    verdict, reasons, safe = ALLOW, _reasons(spans, "leak"), text
    if spans:
        verdict = REDACT
        safe = replace_spans(text, spans, replace)
    if any(s.kind == "SECRET" for s in spans):
        verdict, safe = BLOCK, WITHHELD
    hits = _blocklisted(text, blocklist)
    if hits:
        verdict, safe = BLOCK, WITHHELD
        reasons += [f"blocklist:{term}" for term in hits]
    if vault is not None and verdict != BLOCK:
        safe = vault.reveal(safe)
    return ScanResult(verdict, reasons, safe, spans)


class OutputGuard:
    """`scan_output` for a streamed generation: ``feed(chunk) -> str`` safe to show now; ``close() -> str``.

    Chunks pass through a `StreamScanner` (leaked PII is replaced even when split across chunks). If a
    credential or blocklisted term shows up, the stream stops: the rest is replaced by `WITHHELD` and
    `result.verdict` is "block". Text already shown stays shown, which is why the hold-back exists.
    With `vault`, the conversation's pseudonyms pass and are revealed (a `Revealer` after the scanner).
    """

    def __init__(self, *, blocklist: Iterable[str] = (), strategy: str = "redact", key: bytes | str | None = None,
                 hold: int = 64, max_digits: int | None = 12, allowed: Iterable[str] = (),
                 allowlist: Iterable[str] = (), vault: Vault | None = None) -> None:
        _check_vault(vault)
        check_positive_int(hold, "hold", 0)
        self._blocklist = [t for t in check_str_list(blocklist, "blocklist") if t]
        self._longest = max((len(t) for t in self._blocklist), default=0)
        passes = (*check_str_list(allowed, "allowed"), *check_str_list(allowlist, "allowlist"),
                  *(vault.pseudonyms if vault is not None else ()))
        self._scanner = StreamScanner(make_replacer(strategy, key), hold=max(hold, self._longest, 32),
                                      recognizers=_output_recognizers(max_digits, passes))
        self._revealer = vault.revealer() if vault is not None else None
        self.result = ScanResult(ALLOW)
        self._stopped = False
        self._released: list[str] = []  # what the scanner let out (pre-reveal), for blocklist straddles
        self._shown: list[str] = []

    def _check(self, released: str, final: bool = False) -> str:
        spans = self._scanner.spans
        tail = self._released[-1][-self._longest:] if self._released and self._longest else ""
        hits = _blocklisted(tail + released, self._blocklist)  # a term may straddle two releases
        if any(s.kind == "SECRET" for s in spans) or hits:
            self._stopped = True
            self.result.verdict = BLOCK
            self.result.reasons = _reasons(spans, "leak") + [f"blocklist:{t}" for t in hits]
            return WITHHELD
        if spans:
            self.result.verdict = _worst(self.result.verdict, REDACT)
            self.result.reasons = _reasons(spans, "leak")
        self._released.append(released)
        if self._revealer is not None:
            released = self._revealer.feed(released) + (self._revealer.flush() if final else "")
        self._shown.append(released)
        return released

    def feed(self, chunk: str) -> str:
        check_text(chunk, "chunk")
        if self._stopped:
            return ""
        return self._check(self._scanner.feed(chunk))

    def close(self) -> str:
        if self._stopped:
            out = ""
        else:
            out = self._check(self._scanner.flush(), final=True)
        self.result.spans = list(self._scanner.spans)
        self.result.safe_text = WITHHELD if self._stopped else "".join(self._shown)
        return out


def scan_stream(chunks: Iterable[str], **options) -> Iterator[str]:
    """Yield the guarded version of a stream of generated chunks (see `OutputGuard`)."""
    guard = OutputGuard(**options)
    yield from stream_through(chunks, guard.feed, guard.close)
