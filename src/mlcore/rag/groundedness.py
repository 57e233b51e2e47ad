"""A groundedness check: which sentences of an answer are not supported by the passages it was given.

For each answer sentence ``a`` and the retrieved passages cut into sentences ``p_1 .. p_m``:

    sim(a)     = max_j  e(a) · e(p_j)                       (cosine of MiniLM embeddings, unit vectors)
    overlap(a) = |W(a) ∩ W(passages)| / |W(a)|              W: lower-cased content words (stop words removed)

``a`` is **supported** when ``sim(a) >= sim_threshold`` and ``overlap(a) >= overlap_threshold``; otherwise it is
flagged as a possible hallucination. The embedding term catches paraphrase, the overlap term catches a fluent
sentence about the right topic whose words (names, numbers, keywords) are not in the sources.

The thresholds are not guessed: :func:`labelled_support_set` builds supported / unsupported cases from the
reference text (supported: a passage sentence, lightly perturbed; unsupported: a sentence of another section,
or a passage sentence with its content words swapped for another section's), :func:`choose_thresholds`
picks the pair maximising F1 of the *flag* on one half, and :func:`flag_precision_recall` reports it on the
other. Those labels are synthetic, and a check like this catches unsupported *content*, not wrong reasoning.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_WORD = re.compile(r"[a-z0-9_]+")
STOP = frozenset("""a an the of to in on at by for with from as is are was were be been being it its this that these
those and or not no but if then else when which who whom what how why where can may must will would should could do
does did has have had so such than there their they them you your we our i he she his her also only any all each into
out over under about between same other more most very just one two""".split())


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: split after ``.``, ``?``, ``!`` or ``:`` followed by space, and at blank lines."""
    parts = re.split(r"(?<=[.?!:])\s+|\n\s*\n", text)
    return [" ".join(p.split()) for p in parts if p and len(_WORD.findall(p.lower())) >= 2]


def content_words(text: str) -> set[str]:
    """Lower-cased word tokens minus stop words."""
    return {w for w in _WORD.findall(text.lower()) if w not in STOP}


@dataclass(frozen=True)
class SentenceSupport:
    """One answer sentence, its two support scores and the verdict."""

    sentence: str
    similarity: float
    overlap: float
    supported: bool


@dataclass(frozen=True)
class GroundednessReport:
    """Per-sentence verdicts; ``grounded`` = fraction of sentences supported (1.0 for an empty answer)."""

    sentences: list[SentenceSupport]

    @property
    def grounded(self) -> float:
        return sum(s.supported for s in self.sentences) / len(self.sentences) if self.sentences else 1.0

    @property
    def flagged(self) -> list[str]:
        return [s.sentence for s in self.sentences if not s.supported]


def _texts(name: str, texts: Sequence[str]) -> list[str]:
    # a str is a sequence too: its characters would be scored (or searched) one by one
    if isinstance(texts, str):
        raise ValueError(f"{name} must be a list of str, got a single str; wrap it in a list")
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{name} must be a list of str, got items of type {sorted({type(t).__name__ for t in texts})}")
    return texts


def support_scores(sentences: Sequence[str], passages: Sequence[str], embedder: Any) -> tuple[list[float], list[float]]:
    """``(sim, overlap)`` of each sentence against ``passages`` (see the module docstring)."""
    sentences, passages = _texts("sentences", sentences), _texts("passages", passages)
    if not passages:
        raise ValueError("passages is empty: groundedness needs the passages the answer was given")
    if not sentences:
        return [], []
    units = [u for p in passages for u in split_sentences(p)] or list(passages)
    e_s, e_p = embedder.encode(list(sentences)), embedder.encode(units)     # (S, D), (P, D)
    sims = (e_s @ e_p.T).max(dim=1).values.tolist()
    vocab = set().union(*(content_words(p) for p in passages))
    overlaps = [len(w & vocab) / len(w) if (w := content_words(s)) else 1.0 for s in sentences]
    return sims, overlaps


class GroundednessChecker:
    """Flags answer sentences unsupported by the passages (thresholds from :func:`choose_thresholds`)."""

    def __init__(self, embedder: Any, *, sim_threshold: float = 0.6, overlap_threshold: float = 0.5) -> None:
        for name, v in (("sim_threshold", sim_threshold), ("overlap_threshold", overlap_threshold)):
            if not isinstance(v, (int, float)) or not -1.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a number in [-1, 1], got {v!r}")
        self.embedder, self.sim_threshold, self.overlap_threshold = embedder, sim_threshold, overlap_threshold

    def check(self, answer: str, passages: Sequence[str]) -> GroundednessReport:
        if not isinstance(answer, str):
            raise ValueError(f"answer must be a str, got {type(answer).__name__}")
        sentences = split_sentences(answer)
        sims, overlaps = support_scores(sentences, passages, self.embedder)
        return GroundednessReport([SentenceSupport(s, sim, ov, sim >= self.sim_threshold and ov >= self.overlap_threshold)
                                   for s, sim, ov in zip(sentences, sims, overlaps)])


def labelled_support_set(passages: Sequence[Any], n: int, *, seed: int = 0) -> list[tuple[str, list[str], bool]]:
    """``n`` cases ``(sentence, [passage text], supported)`` from ``passages`` (``Passage`` objects with ``section``),
    half supported, half not; three kinds of each side in turn (see the module docstring)."""
    rng = random.Random(seed)
    by_sentence = [(p, s) for p in passages for s in split_sentences(p.text) if len(s.split()) >= 6]
    if len({p.section for p, _ in by_sentence}) < 2:
        raise ValueError("passages must come from at least two sections to build unsupported cases")
    cases: list[tuple[str, list[str], bool]] = []
    while len(cases) < n:
        p, s = rng.choice(by_sentence)
        words = s.split()
        if len(cases) % 2 == 0:                                   # supported: verbatim or 1-2 words dropped
            for _ in range(rng.randint(0, 2)):
                words.pop(rng.randrange(len(words)))
            cases.append((" ".join(words), [p.text], True))
            continue
        q, other = rng.choice([x for x in by_sentence if x[0].section != p.section])
        if rng.random() < 0.5:                                    # unsupported: another section's sentence
            cases.append((other, [p.text], False))
        else:                                                     # unsupported: content words swapped
            foreign = [w for w in other.split() if w.lower().strip('.,:"') not in STOP] or other.split()
            idx = [i for i, w in enumerate(words) if w.lower().strip('.,:"') not in STOP]
            for i in rng.sample(idx, max(1, len(idx) // 2)):
                words[i] = rng.choice(foreign)
            cases.append((" ".join(words), [p.text], False))
    return cases


def score_cases(cases: Sequence[tuple[str, Sequence[str], bool]], embedder: Any) -> tuple[list[float], list[float]]:
    """``(sim, overlap)`` of every case ``(sentence, passages, label)``, embedding each distinct text once."""
    if not cases:
        raise ValueError("cases is empty: nothing to score")
    units_of = [[u for p in c[1] for u in split_sentences(p)] or list(c[1]) for c in cases]
    texts = sorted({c[0] for c in cases} | {u for us in units_of for u in us})
    row = {t: i for i, t in enumerate(texts)}
    e = embedder.encode(texts)                                                  # (U, D), unit rows
    sims, overlaps = [], []
    for (sentence, passages, _), units in zip(cases, units_of):
        sims.append(float((e[[row[u] for u in units]] @ e[row[sentence]]).max()))
        vocab = set().union(*(content_words(p) for p in passages))
        w = content_words(sentence)
        overlaps.append(len(w & vocab) / len(w) if w else 1.0)
    return sims, overlaps


def flag_precision_recall(sims: Sequence[float], overlaps: Sequence[float], supported: Sequence[bool],
                          sim_threshold: float, overlap_threshold: float) -> dict[str, float]:
    """Precision / recall / F1 of flagging unsupported sentences (positive class = unsupported)."""
    if not len(sims) == len(overlaps) == len(supported):  # zip would score the shortest prefix silently
        raise ValueError(f"sims, overlaps and supported must be equally long, got {len(sims)}, {len(overlaps)}, "
                         f"{len(supported)}")
    flags = [not (s >= sim_threshold and o >= overlap_threshold) for s, o in zip(sims, overlaps)]
    tp = sum(f and not y for f, y in zip(flags, supported))
    fp = sum(f and y for f, y in zip(flags, supported))
    fn = sum((not f) and (not y) for f, y in zip(flags, supported))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def choose_thresholds(sims: Sequence[float], overlaps: Sequence[float], supported: Sequence[bool]) -> tuple[float, float]:
    """The ``(sim_threshold, overlap_threshold)`` on a 0.05 grid that maximises the flag's F1 on these cases.

    Several pairs often tie on a small set; the one in the middle of the tied ones is taken (median similarity
    threshold, then median overlap threshold among those), so the choice sits away from the edge of the region
    that separates the labels rather than on it."""
    if not (len(sims) == len(overlaps) == len(supported)) or not sims:
        raise ValueError(f"sims, overlaps and supported must be equally long and non-empty, got {len(sims)}, "
                         f"{len(overlaps)}, {len(supported)}")
    if all(supported) or not any(supported):
        raise ValueError("supported must hold both True and False cases to choose thresholds")
    grid = [round(0.05 * i, 2) for i in range(21)]
    f1 = {(s, o): flag_precision_recall(sims, overlaps, supported, s, o)["f1"] for s in grid for o in grid}
    best = max(f1.values())
    tied = sorted(pair for pair, v in f1.items() if v >= best - 1e-12)
    s_mid = sorted({s for s, _ in tied})[len({s for s, _ in tied}) // 2]
    o_tied = sorted(o for s, o in tied if s == s_mid)
    return s_mid, o_tied[len(o_tied) // 2]
