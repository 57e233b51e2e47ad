"""Answer metrics: token accuracy, exact match and token-level F1 (SQuAD v1.1, Rajpurkar et al. 2016).

SQuAD normalisation (the official evaluation script's rule): lower-case, drop punctuation, drop the articles
``a``, ``an``, ``the``, collapse white space. Then

    exact_match(pred, gold) = [normalise(pred) == normalise(gold)]
    token_f1(pred, gold)    = 2 P R / (P + R),  P = |common| / |pred tokens|,  R = |common| / |gold tokens|

with ``common`` the multiset intersection of the two token lists. With several gold answers the best score
counts. Both empty -> 1; one empty -> 0; a gold that normalises to nothing is dropped unless every gold
does (all three as the SQuAD v2 script). ``token_accuracy`` is the share of positions
where a model's predicted token id equals the label (labels ``== ignore_index`` do not count).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import torch

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    if not isinstance(text, str):
        raise ValueError(f"answer must be a str, got {type(text).__name__}")
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _golds(gold: str | Sequence[str]) -> list[str]:
    if not isinstance(gold, str) and not (isinstance(gold, Sequence) and all(isinstance(g, str) for g in gold)):
        raise ValueError(f"gold must be a str or a non-empty sequence of str, got {gold!r:.80}")
    golds = [gold] if isinstance(gold, str) else list(gold)
    if not golds:
        raise ValueError("gold must be a str or a non-empty sequence of str, got an empty sequence")
    # SQuAD v2's get_raw_scores drops golds that normalise to nothing ("The", "a."), and scores against ""
    # only when no gold is left
    return [g for g in golds if normalize_answer(g)] or [""]


def exact_match(prediction: str, gold: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals a normalised gold answer, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in _golds(gold)))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, gold: str | Sequence[str]) -> float:
    """Token-overlap F1 of the normalised answers (best over gold answers)."""
    pred = normalize_answer(prediction).split()
    return max(_f1(pred, normalize_answer(g).split()) for g in _golds(gold))


def token_accuracy(logits_or_preds: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100,
                   shift: bool = False) -> float:
    """Share of labelled positions whose predicted token equals the label.

    ``logits_or_preds``: logits (B, T, V) (argmax taken) or predicted ids (B, T); ``labels`` (B, T).
    ``shift=True`` compares position ``t`` with label ``t + 1`` (causal-LM logits against their own inputs).
    """
    if not isinstance(logits_or_preds, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ValueError("logits_or_preds and labels must be torch tensors, got "
                         f"{type(logits_or_preds).__name__} and {type(labels).__name__}")
    preds = logits_or_preds.argmax(dim=-1) if logits_or_preds.dim() == labels.dim() + 1 else logits_or_preds
    if preds.shape != labels.shape:
        raise ValueError(f"predictions {tuple(preds.shape)} and labels {tuple(labels.shape)} must match "
                         "(logits need one extra trailing vocab dimension)")
    if shift:
        preds, labels = preds[..., :-1], labels[..., 1:]
    keep = labels != ignore_index
    n = int(keep.sum())
    if n == 0:
        raise ValueError(f"labels hold no position other than ignore_index={ignore_index}: nothing to score")
    return float((preds[keep] == labels[keep]).sum()) / n
