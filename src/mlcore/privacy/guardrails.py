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

Injection heuristics are patterns with weights w_i combined as 1 - prod(1 - w_i) (independent evidence).
They catch the common phrasings (OWASP LLM01 examples), not an adaptive attacker: layer them with a
classifier and least-privilege tools.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from mlcore.privacy.detect import MASK_MIN_SCORE, RECOGNIZERS, Recognizer, check_text, detect_pii
from mlcore.privacy.keys import normalise
from mlcore.privacy.masking import make_replacer
from mlcore.privacy.spans import PiiSpan, replace_spans
from mlcore.privacy.streaming import StreamScanner

ALLOW, REDACT, BLOCK = "allow", "redact", "block"
_RANK = {ALLOW: 0, REDACT: 1, BLOCK: 2}
WITHHELD = "[response withheld by the output guardrail]"

INJECTION_PATTERNS: tuple[tuple[str, re.Pattern[str], float], ...] = tuple(
    (name, re.compile(p, re.IGNORECASE | re.MULTILINE), w)
    for name, p, w in (
        ("ignore_instructions", r"\b(?:ignore|disregard|forget|override)\b[^.\n]{0,40}?\b(?:previous|prior|above|"
         r"earlier|all|any|your|the|system)\b[^.\n]{0,30}?\b(?:instructions?|rules|prompts?|guidelines|directions)",
         0.9),
        ("reveal_system_prompt", r"\b(?:reveal|show|print|repeat|output|leak|tell me)\b[^.\n]{0,30}?\b(?:system prompt|"
         r"hidden (?:instructions|prompt)|initial (?:instructions|prompt)|your (?:instructions|prompt))", 0.8),
        ("role_override", r"\byou are now\b|\bact as (?:an? )?(?:unrestricted|unfiltered|jailbroken)|\bDAN\b|"
         r"do anything now|developer mode|\bjailbreak", 0.7),
        ("chat_template_tokens", r"<\|(?:im_start|im_end|system|endoftext|eot_id|start_header_id)\|>|\[/?INST\]|"
         r"^\s*###?\s*(?:system|instruction)s?\s*:", 0.8),
        ("disable_safety", r"\b(?:bypass|disable|turn off|ignore)\b[^.\n]{0,20}?\b(?:safety|filters?|guardrails?|"
         r"moderation|content polic(?:y|ies))", 0.7),
        ("system_prompt_question", r"\bwhat(?:'s| is| are| were)\s+(?:your\s+(?:system prompt|(?:initial |hidden |"
         r"original |secret )?instructions)|the\s+(?:system prompt|(?:initial|hidden|original|secret) instructions))"
         r"|\brepeat\b[^.\n]{0,40}?\b(?:verbatim|word for word)\b", 0.7),
        ("stop_following", r"\b(?:stop|quit|cease) (?:following|obeying)\b[^.\n]{0,20}?\b(?:instructions?|rules|"
         r"guidelines|programming)|\bfrom now on,? you (?:will|must|are)\b", 0.7),
        ("exfiltration", r"\b(?:send|post|upload|exfiltrate|forward)\b[^.\n]{0,40}?(?:https?://|\bwebhook\b)", 0.5),
        ("encoded_payload", r"[A-Za-z0-9+/]{200,}={0,2}", 0.3),
    )
)


def long_number_recognizer(max_digits: int) -> Recognizer:
    """Flags runs of more than `max_digits` digits (single spaces or dashes allowed between them)."""
    if max_digits < 4:
        raise ValueError(f"max_digits must be >= 4, got {max_digits}")
    pattern = re.compile(r"(?<!\d)\d(?:[ -]?\d){" + str(max_digits) + r",}(?!\d)")

    def find_long_numbers(text: str) -> Iterator[PiiSpan]:
        for m in pattern.finditer(text):
            yield PiiSpan("LONG_NUMBER", m.start(), m.end(), m.group(), 0.6)

    return find_long_numbers


def _output_recognizers(max_digits: int | None) -> tuple[Recognizer, ...]:
    return RECOGNIZERS if max_digits is None else (*RECOGNIZERS, long_number_recognizer(max_digits))


@dataclass
class ScanResult:
    """The decision on one text: `verdict` in {"allow", "redact", "block"}, why, and what is safe to pass on.

    `reasons` name kinds and rules (``"pii:CARD"``, ``"injection:ignore_instructions"``), never values.
    """

    verdict: str
    reasons: list[str] = field(default_factory=list)
    safe_text: str = ""
    spans: list[PiiSpan] = field(default_factory=list)
    injection_score: float = 0.0

    @property
    def allowed(self) -> bool:
        return self.verdict != BLOCK


def _worst(a: str, b: str) -> str:
    return a if _RANK[a] >= _RANK[b] else b


_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\ufeff"))
_SPACED_LETTERS = re.compile(r"\b(?:[A-Za-z] ){3,}[A-Za-z]\b")


def _normalised(text: str) -> str:
    """The text an attacker hides a phrase in, undone: NFKC (fullwidth and styled letters), zero-width and
    soft-hyphen characters removed, "I g n o r e" letter-spacing collapsed."""
    text = unicodedata.normalize("NFKC", text).translate(_INVISIBLE)
    return _SPACED_LETTERS.sub(lambda m: m.group().replace(" ", ""), text)


def injection_score(text: str) -> tuple[float, list[str]]:
    """Combined heuristic score in [0, 1] and the names of the patterns that fired (on the text as given
    or on its normalised form)."""
    plain = _normalised(text)
    fired = [(name, w) for name, pattern, w in INJECTION_PATTERNS if pattern.search(text) or pattern.search(plain)]
    keep = 1.0
    for _, w in fired:
        keep *= 1.0 - w
    return 1.0 - keep, [name for name, _ in fired]


def _blocklisted(text: str, blocklist: Iterable[str]) -> list[str]:
    lowered = text.lower()
    return [term for term in blocklist if term and term.lower() in lowered]


def _reasons(spans: list[PiiSpan], prefix: str = "pii") -> list[str]:
    counts = Counter(s.kind for s in spans)
    return [f"{'secret' if k == 'SECRET' else prefix}:{k}" + (f" x{n}" if n > 1 else "") for k, n in counts.items()]


def scan_input(
    prompt: str,
    *,
    blocklist: Iterable[str] = (),
    strategy: str = "redact",
    key: bytes | str | None = None,
    injection_threshold: float = 0.7,
) -> ScanResult:
    """Sanitise a prompt before it reaches a model: replace PII and secrets, block injections and blocklist.

    Args:
        strategy: how PII in the prompt is replaced ("redact", "pseudonym" with `key`, ...).
        injection_threshold: block when the combined injection score reaches this.
    """
    check_text(prompt, "prompt")
    if not 0.0 < injection_threshold <= 1.0:
        raise ValueError(f"injection_threshold must be in (0, 1], got {injection_threshold}")
    replace = make_replacer(strategy, key)
    spans = detect_pii(prompt, min_score=MASK_MIN_SCORE)
    verdict, reasons = ALLOW, []
    safe = prompt
    if spans:
        verdict, reasons = REDACT, _reasons(spans)
        secret = make_replacer("redact")  # a credential is never pseudonymised into the prompt
        safe = replace_spans(prompt, spans, lambda s: secret(s) if s.kind == "SECRET" else replace(s))
    score, fired = injection_score(prompt)
    if score >= injection_threshold:
        verdict = BLOCK
    reasons += [f"injection:{name}" for name in fired]
    hits = _blocklisted(prompt, blocklist)
    if hits:
        verdict = BLOCK
        reasons += [f"blocklist:{term}" for term in hits]
    return ScanResult(verdict, reasons, safe, spans, score)


def scan_output(
    text: str,
    *,
    blocklist: Iterable[str] = (),
    allowed: Iterable[str] = (),
    strategy: str = "redact",
    key: bytes | str | None = None,
    max_digits: int | None = 12,
) -> ScanResult:
    """Check a generation before anyone sees it: block secrets and blocklisted terms, redact leaked PII.

    Args:
        allowed: values the user supplied themselves (e.g. their own e-mail) that may be echoed back.
        max_digits: also redact digit runs longer than this (None: off).
    """
    check_text(text)
    allowed_norm = {(v if isinstance(v, str) else str(v)) for v in allowed}
    spans = [s for s in detect_pii(text, recognizers=_output_recognizers(max_digits), min_score=MASK_MIN_SCORE)
             if not any(normalise(s.kind, s.text) == normalise(s.kind, a) for a in allowed_norm)]
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
    return ScanResult(verdict, reasons, safe, spans)


class OutputGuard:
    """`scan_output` for a streamed generation: ``feed(chunk) -> str`` safe to show now; ``close() -> str``.

    Chunks pass through a `StreamScanner` (leaked PII is replaced even when split across chunks). If a
    credential or blocklisted term shows up, the stream stops: the rest is replaced by `WITHHELD` and
    `result.verdict` is "block". Text already shown stays shown, which is why the hold-back exists.
    """

    def __init__(self, *, blocklist: Iterable[str] = (), strategy: str = "redact", key: bytes | str | None = None,
                 hold: int = 64, max_digits: int | None = 12) -> None:
        self._blocklist = [t for t in blocklist if t]
        self._longest = max((len(t) for t in self._blocklist), default=0)
        self._scanner = StreamScanner(make_replacer(strategy, key), hold=max(hold, self._longest, 32),
                                      recognizers=_output_recognizers(max_digits))
        self.result = ScanResult(ALLOW)
        self._stopped = False
        self._shown: list[str] = []

    def _check(self, released: str) -> str:
        spans = self._scanner.spans
        tail = self._shown[-1][-self._longest:] if self._shown and self._longest else ""
        hits = _blocklisted(tail + released, self._blocklist)  # a term may straddle two releases
        if any(s.kind == "SECRET" for s in spans) or hits:
            self._stopped = True
            self.result.verdict = BLOCK
            self.result.reasons = _reasons(spans, "leak") + [f"blocklist:{t}" for t in hits]
            return WITHHELD
        if spans:
            self.result.verdict = _worst(self.result.verdict, REDACT)
            self.result.reasons = _reasons(spans, "leak")
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
            out = self._check(self._scanner.flush())
        self.result.spans = list(self._scanner.spans)
        self.result.safe_text = WITHHELD if self._stopped else "".join(self._shown)
        return out


def scan_stream(chunks: Iterable[str], **options) -> Iterator[str]:
    """Yield the guarded version of a stream of generated chunks (see `OutputGuard`)."""
    guard = OutputGuard(**options)
    for chunk in chunks:
        out = guard.feed(chunk)
        if out:
            yield out
    tail = guard.close()
    if tail:
        yield tail
