"""Output drift: what a deployed model says, summarised per window and compared with a reference window.

Three cheap signals that move when a model, its prompts or its users change:

* **length** of an answer in whitespace-separated words (mean, and the PSI of the length distribution);
* **refusal rate**: the share of answers matching refusal phrases (``REFUSAL_PATTERNS``, case-insensitive;
  a heuristic, as production refusal detectors are -- pass your own patterns);
* **guardrail hit rate**: the share of answers that ``mlcore.privacy.scan_output`` does not simply allow
  (it redacted leaked PII or blocked a secret).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mlcore.eval.drift import psi

REFUSAL_PATTERNS: tuple[str, ...] = (
    r"\bI(?:'m| am) (?:sorry|afraid|unable|not able)\b",
    r"\bI (?:can(?:no|')t|won't|will not|do not|don't) (?:help|assist|provide|share|do that|answer)\b",
    r"\b(?:cannot|can't|unable to) (?:help|assist|provide|share|disclose)\b",
    r"\bas an AI\b",
    r"\bnot (?:allowed|permitted) to\b",
)


def _texts(name: str, texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ValueError(f"{name} must be a sequence of str, got a single str")
    texts = list(texts)
    if not texts:
        raise ValueError(f"{name} must hold at least one text, got none")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"{name}[{i}] must be a str, got {type(t).__name__}")
    return texts


def is_refusal(text: str, patterns: Iterable[str] = REFUSAL_PATTERNS) -> bool:
    """True when ``text`` matches one of the refusal ``patterns`` (regular expressions, case-insensitive)."""
    return any(re.search(p, text, flags=re.IGNORECASE) for p in patterns)


def guardrail_hit(text: str) -> bool:
    """True when ``mlcore.privacy.scan_output`` redacts or blocks ``text``."""
    from mlcore.privacy import scan_output

    return scan_output(text).verdict != "allow"


@dataclass(frozen=True)
class OutputStats:
    """Summary of one window of answers: ``n``, ``mean_length`` (words), ``refusal_rate``, ``guardrail_hit_rate``
    and the per-answer ``lengths``."""

    n: int
    mean_length: float
    refusal_rate: float
    guardrail_hit_rate: float
    lengths: tuple[int, ...]


def output_stats(texts: Sequence[str], *, refusal_patterns: Iterable[str] = REFUSAL_PATTERNS,
                 guardrails: bool = True) -> OutputStats:
    """Length, refusal rate and guardrail hit rate (``guardrails=False`` skips the scan: rate NaN)."""
    texts = _texts("texts", texts)
    patterns = tuple(refusal_patterns)
    lengths = tuple(len(t.split()) for t in texts)
    refusals = sum(is_refusal(t, patterns) for t in texts)
    hits = sum(guardrail_hit(t) for t in texts) / len(texts) if guardrails else float("nan")
    return OutputStats(len(texts), sum(lengths) / len(texts), refusals / len(texts), hits, lengths)


def output_drift(reference: Sequence[str], current: Sequence[str], *, bins: int = 10,
                 refusal_patterns: Iterable[str] = REFUSAL_PATTERNS, guardrails: bool = True) -> dict[str, float]:
    """Current minus reference for each signal, plus ``length_psi`` (quantile bins of the reference lengths)."""
    patterns = tuple(refusal_patterns)
    ref = output_stats(reference, refusal_patterns=patterns, guardrails=guardrails)
    cur = output_stats(current, refusal_patterns=patterns, guardrails=guardrails)
    return {
        "length_psi": psi(ref.lengths, cur.lengths, bins=bins),
        "mean_length_delta": cur.mean_length - ref.mean_length,
        "refusal_rate_delta": cur.refusal_rate - ref.refusal_rate,
        "guardrail_hit_rate_delta": cur.guardrail_hit_rate - ref.guardrail_hit_rate,
    }
