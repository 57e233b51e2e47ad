"""Retrieval-augmented generation (Lewis et al. 2020) with the project's tiny decoder, and the prompts the
comparison uses.

    1. retrieve the top-k passages for the question (``Retriever``: BM25, dense or hybrid);
    2. mask personal data in each passage (``mlcore.privacy.mask_pii``) before it reaches the prompt;
    3. number the passages and put them in front of the question, each cut to fit the model's context
       (256 tokens for the tiny target: prompt budget = context - max_new_tokens);
    4. generate greedily (``mlcore.inference.generate``), stopping at a newline or end of text;
    5. check the answer's sentences against the passages (``GroundednessChecker``).

Prompt layout (the base and LoRA answers use the same ``Question / Answer`` frame, without passages)::

    [1] <passage>
    [2] <passage>

    Question: <question>
    Answer:
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


def qa_prompt(question: str, passages: Sequence[str] = ()) -> str:
    """The prompt: numbered passages (if any), then ``Question: ...`` and ``Answer:``."""
    block = "".join(f"[{i}] {p}\n" for i, p in enumerate(passages, start=1))
    return (block + "\n" if block else "") + f"Question: {question}\nAnswer:"


@dataclass
class Generation:
    """An answer and what it cost: prompt / generated tokens, wall-clock seconds from ``start`` (request
    received, ``time.perf_counter()``) to the end, and the arrival time of each generated token."""

    text: str
    prompt_tokens: int
    new_tokens: int
    seconds: float
    start: float = 0.0
    token_times: list[float] = field(default_factory=list)


def generate_answer(model: nn.Module, tokenizer: Any, prompt: str, *, max_new_tokens: int = 32,
                    start: float | None = None) -> Generation:
    """Greedy answer to ``prompt`` up to end of text or the first newline (mlcore ``generate``); ``start`` is
    when the request arrived (default: now), so a RAG answer's latency includes its retrieval."""
    from mlcore.finetune.sft import eos_id_of, text_encoder
    from mlcore.inference import generate

    ids = text_encoder(tokenizer)(prompt)
    context = int(getattr(getattr(model, "config", None), "max_seq_len", 0) or 0)
    if context and len(ids) + max_new_tokens > context:
        raise ValueError(f"prompt has {len(ids)} tokens + max_new_tokens={max_new_tokens} > the model's context "
                         f"{context}; shorten the passages")
    device = next(model.parameters()).device
    eos = eos_id_of(tokenizer)
    newline = text_encoder(tokenizer)("\n")
    t0 = time.perf_counter() if start is None else start
    times: list[float] = []

    def stamp(tokens: torch.Tensor) -> None:
        tokens.to("cpu")  # the token exists once it reaches the host
        times.append(time.perf_counter())

    with torch.no_grad():
        out = generate(model, torch.tensor([ids], device=device), max_new_tokens=max_new_tokens,
                       eos_token_id=eos, stop=[newline] if len(newline) == 1 else None,
                       streamer=stamp)[0, len(ids):].tolist()
    seconds = time.perf_counter() - t0
    out = out[:out.index(eos)] if eos in out else out
    return Generation(tokenizer.decode(out).split("\n")[0].strip(), len(ids), len(out), seconds, t0, times)


@dataclass
class RagAnswer:
    """A RAG answer with the passages it was given (ids and masked texts) and its groundedness report."""

    question: str
    generation: Generation
    passage_ids: list[int]
    passages: list[str]
    report: Any = None

    @property
    def text(self) -> str:
        return self.generation.text


class RagPipeline:
    """retrieve -> mask PII -> numbered-passage prompt -> generate -> groundedness check."""

    def __init__(self, retriever: Any, model: nn.Module, tokenizer: Any, *, k: int = 3, mode: str = "hybrid",
                 max_new_tokens: int = 32, context: int | None = None, checker: Any = None,
                 mask: bool = True) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        from mlcore.rag.retriever import MODES

        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        for name, value in (("max_new_tokens", max_new_tokens), ("context", context)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.retriever, self.model, self.tokenizer, self.k, self.mode = retriever, model, tokenizer, k, mode
        self.max_new_tokens, self.checker, self.mask = max_new_tokens, checker, mask
        self.context = context or int(getattr(getattr(model, "config", None), "max_seq_len", 256))

    def _fit(self, question: str, passages: list[str]) -> list[str]:
        """Cut each passage to an equal share of the token budget left after the question frame."""
        from mlcore.finetune.sft import text_encoder

        encode = text_encoder(self.tokenizer)
        frame = len(encode(qa_prompt(question, [""] * len(passages))))
        share = (self.context - self.max_new_tokens - frame) // max(len(passages), 1)
        if share < 8:
            raise ValueError(f"the question leaves {share} tokens per passage in a context of {self.context}; "
                             "use a shorter question, fewer passages or fewer new tokens")
        # one token of slack per passage for merges across its edges in the prompt
        return [p if len(encode(p)) <= share else self._cut(encode, p, share - 1) for p in passages]

    def _cut(self, encode: Any, text: str, budget: int) -> str:
        """The longest prefix of ``text`` (whole tokens) that re-encodes to at most ``budget`` tokens. A cut inside
        a character of several byte-level tokens (emoji, CJK) decodes to U+FFFD, which re-encodes to more tokens
        than it replaced: dropped, and the cut moved back until it fits."""
        ids = encode(text)
        for n in range(budget, 0, -1):
            cut = self.tokenizer.decode(ids[:n]).rstrip("\ufffd").strip()
            if len(encode(cut)) <= budget:
                return cut
        return ""

    def prompt_for(self, question: str) -> tuple[str, list[int], list[str]]:
        """``(prompt, passage ids, passage texts as they appear in the prompt)``."""
        ids = self.retriever.search(question, self.k, mode=self.mode)
        texts = [self.retriever.texts[i] for i in ids]
        if self.mask:
            from mlcore.privacy import mask_pii

            texts = [mask_pii(t) for t in texts]
        texts = self._fit(question, [" ".join(t.split()) for t in texts])
        return qa_prompt(question, texts), ids, texts

    def answer(self, question: str) -> RagAnswer:
        start = time.perf_counter()
        prompt, ids, texts = self.prompt_for(question)
        gen = generate_answer(self.model, self.tokenizer, prompt, max_new_tokens=self.max_new_tokens, start=start)
        report = self.checker.check(gen.text, texts) if self.checker is not None else None
        return RagAnswer(question, gen, ids, texts, report)
