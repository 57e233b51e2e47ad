"""Base model vs LoRA-tuned model vs RAG, answering the same held-out questions.

- (a) **base**: the tiny target (``load_tiny("target")``) given ``Question: ... Answer:``;
- (b) **LoRA**: the same model with LoRA on every linear layer (``mlcore.finetune.apply_lora``), trained by a
  short plain AdamW loop on the *train* questions' ``(question, answer)`` pairs, loss on the answer tokens only;
- (c) **RAG**: the base model given the top-k retrieved passages (``RagPipeline``).

Per system: exact match and token F1 against the reference answer (``mlcore.eval``), the groundedness of the
answer against the passages retrieved for the question (same passages for every system, so the figure says
"is this answer backed by the reference text"), latency (end-to-end p50 / p95, ``mlcore.eval.latency_summary``)
and cost (tokens processed per question: prompt + generated). RAG also reports its retrieval hit rate (the gold
section among the passages it was given). Fine-tuning teaches a format; it cannot teach facts that are not in
its training pairs, which is what the held-out split tests.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlcore.rag.pipeline import Generation, RagPipeline, generate_answer, qa_prompt


def qa_tensors(items: Sequence[Any], tokenizer: Any, *, max_length: int = 160) -> dict[str, torch.Tensor]:
    """``input_ids`` / ``labels`` / ``attention_mask`` ``(N, L)`` for ``prompt + " " + answer + eos``, labels -100
    on the prompt and padding."""
    from mlcore.finetune.sft import eos_id_of, text_encoder

    encode, eos = text_encoder(tokenizer), eos_id_of(tokenizer)
    rows = []
    for it in items:
        p, a = encode(qa_prompt(it.question)), encode(" " + it.answer) + [eos]
        rows.append(((p + a)[:max_length], ([-100] * len(p) + a)[:max_length]))
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), eos, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, :len(x)], labels[i, :len(y)], mask[i, :len(x)] = torch.tensor(x), torch.tensor(y), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def train_lora_qa(model: nn.Module, tokenizer: Any, items: Sequence[Any], *, steps: int = 60, batch_size: int = 8,
                  lr: float = 3e-3, r: int = 8, lora_alpha: float = 16.0, seed: int = 0) -> tuple[nn.Module, list[float]]:
    """A LoRA copy of ``model`` trained on ``items``' QA pairs; returns ``(model, loss per step)``."""
    from mlcore.finetune import LoraConfig, apply_lora

    if not items:
        raise ValueError("items is empty: LoRA needs training pairs")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    tuned = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    apply_lora(tuned, LoraConfig(r=r, lora_alpha=lora_alpha, target_modules="all-linear"), generator=gen,
               verbose=False)
    device = next(tuned.parameters()).device
    data = {k: v.to(device) for k, v in qa_tensors(items, tokenizer).items()}
    params = [p for p in tuned.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    tuned.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, data["input_ids"].shape[0], (min(batch_size, data["input_ids"].shape[0]),),
                            generator=gen).to(device)
        ids, labels, mask = data["input_ids"][idx], data["labels"][idx], data["attention_mask"][idx]
        logits = tuned(ids, attention_mask=mask)                                  # (B, T, V)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return tuned.eval(), losses


def _summary(name: str, items: Sequence[Any], gens: Sequence[Generation], grounded: Sequence[float],
             hits: Sequence[bool] | None) -> dict[str, Any]:
    from mlcore.eval import RequestTiming, exact_match, latency_summary, token_f1

    timings = [RequestTiming(g.start, g.token_times or [g.start + g.seconds]) for g in gens]
    lat = latency_summary(timings)
    return {
        "system": name,
        "exact_match": statistics.fmean(exact_match(g.text, it.answer) for g, it in zip(gens, items)),
        "token_f1": statistics.fmean(token_f1(g.text, it.answer) for g, it in zip(gens, items)),
        "grounded": statistics.fmean(grounded),
        "retrieval_hit": statistics.fmean(hits) if hits is not None else None,
        "latency_p50_s": lat["e2e_p50"], "latency_p95_s": lat["e2e_p95"],
        "tokens_per_question": statistics.fmean(g.prompt_tokens + g.new_tokens for g in gens),
    }


def compare_systems(items: Sequence[Any], *, base: nn.Module, lora: nn.Module | None, rag: RagPipeline,
                    section_of: Sequence[int], checker: Any, max_new_tokens: int = 32) -> tuple[list[dict], list[dict]]:
    """``(table rows, per-question answers)`` for base, LoRA (when given) and RAG on ``items`` (``QAItem``s)."""
    if not items:
        raise ValueError("items is empty: nothing to compare on")
    tok = rag.tokenizer
    systems: dict[str, list[Generation]] = {"base": [], "lora": [], "rag": []}
    grounded: dict[str, list[float]] = {k: [] for k in systems}
    hits, answers = [], []
    for it in items:
        ans = rag.answer(it.question)
        row = {"question": it.question, "reference": it.answer, "rag": ans.text, "passages": ans.passages}
        hits.append(it.section in {section_of[i] for i in ans.passage_ids})
        for name, model in (("base", base), ("lora", lora)):
            if model is None:
                continue
            g = generate_answer(model, tok, qa_prompt(it.question), max_new_tokens=max_new_tokens)
            systems[name].append(g)
            grounded[name].append(checker.check(g.text, ans.passages).grounded)
            row[name] = g.text
        systems["rag"].append(ans.generation)
        grounded["rag"].append(checker.check(ans.text, ans.passages).grounded)
        answers.append(row)
    rows = [_summary(name, items, gens, grounded[name], hits if name == "rag" else None)
            for name, gens in systems.items() if gens]
    return rows, answers
