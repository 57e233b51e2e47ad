"""Precision, recall and F-beta per kind, by span matching against gold labels.

A predicted span is a true positive when it has the gold span's kind and their intersection-over-union
(in characters) is at least `min_iou` (0.5 by default, so a card found with or without a trailing space
still counts); each gold span can be matched once. With TP, FP, FN per kind,

    P = TP / (TP + FP),  R = TP / (TP + FN),  F_beta = (1 + beta^2) P R / (beta^2 P + R)

and F2 (beta = 2) weights recall four times as much as precision: for a privacy filter a missed card
number costs more than a redacted order number.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mlcore.privacy.evaluation.synthetic import LabelledText
from mlcore.privacy.spans import PiiSpan


@dataclass
class KindScore:
    kind: str
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    def f_beta(self, beta: float = 2.0) -> float:
        p, r = self.precision, self.recall
        return (1 + beta**2) * p * r / (beta**2 * p + r) if p + r else 0.0

    @property
    def f2(self) -> float:
        return self.f_beta(2.0)

    @property
    def support(self) -> int:
        return self.tp + self.fn


def _iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / (max(a[1], b[1]) - min(a[0], b[0]))


def evaluate(
    records: Iterable[LabelledText],
    detector: Callable[[str], list[PiiSpan]],
    *,
    min_iou: float = 0.5,
) -> dict[str, KindScore]:
    """Per-kind TP/FP/FN of `detector` on `records` (kinds seen in either gold or predictions)."""
    if isinstance(records, str | bytes) or isinstance(records, LabelledText):
        raise TypeError(f"records must be a list of LabelledText, got a single {type(records).__name__}")
    scores: dict[str, KindScore] = {}
    for rec in records:
        predicted = detector(rec.text)
        used: set[int] = set()
        for p in predicted:
            score = scores.setdefault(p.kind, KindScore(p.kind))
            match = next((i for i, (k, s, e) in enumerate(rec.spans)
                          if i not in used and k == p.kind and _iou((s, e), (p.start, p.end)) >= min_iou), None)
            if match is None:
                score.fp += 1
            else:
                used.add(match)
                score.tp += 1
        for i, (k, _, _) in enumerate(rec.spans):
            if i not in used:
                scores.setdefault(k, KindScore(k)).fn += 1
    return dict(sorted(scores.items()))


def format_table(scores: dict[str, KindScore]) -> str:
    """A Markdown table of per-kind precision, recall, F2 and support."""
    rows = ["| kind | precision | recall | F2 | support | FP |", "|---|---|---|---|---|---|"]
    for s in scores.values():
        rows.append(f"| {s.kind} | {s.precision:.4f} | {s.recall:.4f} | {s.f2:.4f} | {s.support} | {s.fp} |")
    return "\n".join(rows)
