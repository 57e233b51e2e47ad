"""A labelled question set built from real text: the sections of ``pydoc_data.topics`` (the Python language
reference that ships with CPython, about 465 kB of English).

The labels are **synthetic-from-real-text**: nobody wrote these questions. Each section of the reference (a
heading underlined with ``*``, ``=`` or ``-`` and the text up to the next heading) yields

    question = a template around the heading, e.g. 'What is the "assert" statement?'
    answer   = the first sentence of the section's prose (the definition the reference opens with)
    gold     = the section's id: any chunk cut from that section is a relevant passage

Sections whose heading occurs twice (the reference repeats some, e.g. under "compound" and "if") are kept
once, so every question has exactly one gold section. The passages a retriever searches are the sections cut
into overlapping chunks of the embedder's tokens (``chunking.py``).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from mlcore.rag.chunking import chunk_text

_HEADING = re.compile(r"^(\S.*)\n([*=\-~^])\2+\n", re.M)
_SENTENCE = re.compile(r"(.+?[.?!:])(?=\s|$)", re.S)
_TEMPLATES = ("What is {h}?", "Explain {h}.", "What does the reference say about {h}?", "Describe {h}.")


@dataclass(frozen=True)
class Section:
    """One section of the reference: ``id`` (its index), the topic it came from, heading and body."""

    id: int
    topic: str
    heading: str
    body: str


@dataclass(frozen=True)
class Passage:
    """A chunk of a section: what a retriever indexes. ``section`` is the gold label it carries."""

    id: int
    section: int
    text: str


@dataclass(frozen=True)
class QAItem:
    """A question, its reference answer and the id of the section that answers it."""

    question: str
    answer: str
    section: int


def pydoc_sections(*, limit: int | None = None, max_chars: int | None = None, min_chars: int = 200) -> list[Section]:
    """Unique-heading sections of ``pydoc_data.topics`` in topic order; bodies under ``min_chars`` are dropped,
    bodies over ``max_chars`` cut (for quick runs); at most ``limit`` sections."""
    from pydoc_data.topics import topics

    for name, value in (("limit", limit), ("max_chars", max_chars)):
        # max_chars=0 meant "no cut" (falsy) and a negative one cut the end off the body
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    if isinstance(min_chars, bool) or not isinstance(min_chars, int) or min_chars < 0:
        raise ValueError(f"min_chars must be an int >= 0, got {min_chars!r}")
    out: list[Section] = []
    seen: set[str] = set()
    for topic in sorted(topics):
        text = topics[topic]
        heads = [m for m in _HEADING.finditer(text) if len(m.group(0).splitlines()[1]) == len(m.group(1))]
        for i, m in enumerate(heads):
            heading = m.group(1).strip()
            body = text[m.end():heads[i + 1].start() if i + 1 < len(heads) else len(text)].strip()
            if heading in seen or len(body) < min_chars:
                continue
            seen.add(heading)
            out.append(Section(len(out), topic, heading, body if max_chars is None else body[:max_chars]))
            if limit is not None and len(out) == limit:
                return out
    return out


def first_sentence(body: str, *, max_words: int = 40) -> str | None:
    """The first sentence of the first prose paragraph (grammar blocks, version notes and indented code
    skipped), at most ``max_words`` words; None when there is none."""
    for para in re.split(r"\n\s*\n", body):
        if para.startswith(" ") or "::=" in para or re.match(r"(New|Changed|Added|Deprecated) in", para):
            continue
        m = _SENTENCE.match(" ".join(para.split()))
        if m and len(m.group(1).split()) >= 5:
            words = m.group(1).split()
            return " ".join(words[:max_words])
    return None


def _question(heading: str, rng: random.Random) -> str:
    h = heading if heading[:1] in '"_' or heading[1:2].isupper() else heading[:1].lower() + heading[1:]
    return rng.choice(_TEMPLATES).format(h=h)


def build_qa_set(sections: list[Section], *, seed: int = 0) -> list[QAItem]:
    """One question per section with a usable first sentence (see the module docstring)."""
    if not sections:
        raise ValueError("sections is empty: build them with pydoc_sections()")
    rng = random.Random(seed)
    items = []
    for s in sections:
        answer = first_sentence(s.body)
        if answer:
            items.append(QAItem(_question(s.heading, rng), answer, s.id))
    return items


def split_qa(items: list[QAItem], *, test_fraction: float = 0.4, seed: int = 0) -> tuple[list[QAItem], list[QAItem]]:
    """A seeded ``(train, test)`` split of the questions (train: for fine-tuning; test: for every comparison)."""
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if len(items) < 2:
        raise ValueError(f"items must hold at least 2 questions to split, got {len(items)}")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_test = max(1, min(len(items) - 1, round(len(items) * test_fraction)))
    return [items[i] for i in sorted(order[n_test:])], [items[i] for i in sorted(order[:n_test])]


def chunk_sections(sections: list[Section], tokenizer: Any, *, size: int = 128, overlap: int = 32) -> list[Passage]:
    """Every section (heading + body) cut into chunks of ``size`` embedder tokens overlapping by ``overlap``."""
    if not sections:
        raise ValueError("sections is empty: an empty corpus has nothing to chunk")
    out: list[Passage] = []
    for s in sections:
        for c in chunk_text(f"{s.heading}\n\n{s.body}", tokenizer, size=size, overlap=overlap):
            out.append(Passage(len(out), s.id, c.text))
    return out
