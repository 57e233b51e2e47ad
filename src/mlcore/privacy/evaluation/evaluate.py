"""Precision, recall and F-beta per kind, by span matching against gold labels.

A predicted span is a true positive when it has the gold span's kind, overlaps it, and their
intersection-over-union (in characters) is at least `min_iou` (0.5 by default, so a card found with or
without a trailing space still counts; 1.0 asks for exact spans); each gold span can be matched once, and
the matching is a maximum one (a prediction does not take the only gold another prediction could match,
which first-come matching did at low `min_iou`). With TP, FP, FN per kind,

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


def _max_matching(edges: list[list[int]], n_gold: int) -> int:
    """Size of a maximum matching of predictions to golds (Kuhn's augmenting paths; `edges[p]` = golds that
    prediction p may match). Spans per record are few, so the O(P * E) search is cheap."""
    owner = [-1] * n_gold

    def augment(p: int, seen: list[bool]) -> bool:
        for g in edges[p]:
            if not seen[g]:
                seen[g] = True
                if owner[g] < 0 or augment(owner[g], seen):
                    owner[g] = p
                    return True
        return False

    return sum(augment(p, [False] * n_gold) for p in range(len(edges)))


def evaluate(
    records: Iterable[LabelledText],
    detector: Callable[[str], list[PiiSpan]],
    *,
    min_iou: float = 0.5,
) -> dict[str, KindScore]:
    """Per-kind TP/FP/FN of `detector` on `records` (kinds seen in either gold or predictions).

    min_iou: in (0, 1]; 1.0 counts only exact spans, a small value any overlap."""
    if isinstance(records, str | bytes) or isinstance(records, LabelledText):
        raise TypeError(f"records must be a list of LabelledText, got a single {type(records).__name__}")
    if isinstance(min_iou, bool) or not isinstance(min_iou, int | float) or not 0 < min_iou <= 1:
        raise ValueError(f"min_iou must be a number in (0, 1] (1.0: exact spans), got {min_iou!r}")
    scores: dict[str, KindScore] = {}
    for rec in records:
        for k, s, e in rec.spans:
            if not 0 <= s < e <= len(rec.text):
                raise ValueError(f"gold span ({k!r}, {s}, {e}) is empty or outside its text of {len(rec.text)} characters")
        predicted = detector(rec.text)
        for kind in {p.kind for p in predicted} | {k for k, _, _ in rec.spans}:
            preds = [(p.start, p.end) for p in predicted if p.kind == kind]
            golds = [(s, e) for k, s, e in rec.spans if k == kind]
            edges = [[g for g, gold in enumerate(golds) if min(p[1], gold[1]) > max(p[0], gold[0])
                      and _iou(gold, p) >= min_iou] for p in preds]
            tp = _max_matching(edges, len(golds))
            score = scores.setdefault(kind, KindScore(kind))
            score.tp += tp
            score.fp += len(preds) - tp
            score.fn += len(golds) - tp
    return dict(sorted(scores.items()))


def format_table(scores: dict[str, KindScore]) -> str:
    """A Markdown table of per-kind precision, recall, F2 and support."""
    rows = ["| kind | precision | recall | F2 | support | FP |", "|---|---|---|---|---|---|"]
    for s in scores.values():
        rows.append(f"| {s.kind} | {s.precision:.4f} | {s.recall:.4f} | {s.f2:.4f} | {s.support} | {s.fp} |")
    return "\n".join(rows)
