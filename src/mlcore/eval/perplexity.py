"""Perplexity, with the strided sliding window of the transformers docs ("Perplexity of fixed-length models").

For tokens ``x_1 .. x_N`` and a causal LM, ``PPL = exp( -1/(N-1) * sum_{t=2..N} log p(x_t | x_<t) )``: the
exponential of the mean negative log-likelihood (NLL) of every token but the first (nothing predicts it).

A model sees at most ``max_length`` tokens at once. The sliding window evaluates windows starting every
``stride`` tokens, ``[begin, begin + max_length)``, and scores in each only the tokens not scored before
(the last ``end - prev_end``), each with up to ``max_length - stride`` tokens of context. With
``stride < max_length`` every token after the first is scored once; ``stride == max_length`` gives disjoint
chunks whose first tokens have no context and are not scored (as in the docs; cheap and pessimistic: a
chunk's early tokens have little context); a smaller stride costs ``max_length / stride`` times more forwards and
approaches the true perplexity.

``weighting="docs"`` (the default) reproduces the docs' snippet exactly: each window's mean loss is weighed by
``valid labels - batch``, which is one token per row too few for every window after the first (that window's
first scored label has a predecessor inside it, so all ``end - prev_end`` of its labels are scored). The
difference is small (about 1e-4 relative on a few hundred tokens) and vanishes as windows grow; it is kept as
the default so the figure equals the one a reader computes from the docs. One exception: where the last window
holds a single token (``stride == max_length`` and ``T = k * stride + 1``) the snippet's mean loss is NaN (no
label to score) and its weight 0, so it returns NaN; that window scores nothing and is skipped here.
``weighting="token"`` weighs every scored token the same: the exact ``exp(mean NLL)`` over the scored tokens.

Works with an mlcore ``Transformer`` and with a transformers causal LM (anything returning logits, or an
object with ``.logits``). Shapes: ``input_ids`` (T,) or (B, T); rows are scored together, window by window.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _context(model: nn.Module) -> int | None:
    """The model's number of positions from its config (mlcore or transformers names), or None."""
    cfg = getattr(model, "config", None)
    for attr in ("max_seq_len", "max_position_embeddings", "n_positions"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def model_max_length(model: nn.Module) -> int:
    """The longest input a model takes: mlcore ``config.max_seq_len`` or HF ``config.max_position_embeddings``."""
    context = _context(model)
    if context is not None:
        return context
    raise ValueError("max_length=None needs a model with config.max_seq_len (mlcore) or "
                     f"config.max_position_embeddings (transformers); got {type(model).__name__}")


def logits_of(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, T, V) float logits from an mlcore Transformer or a transformers causal LM."""
    out = model(input_ids)
    logits = out.logits if hasattr(out, "logits") else out
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return logits.float()


def _check_ids(input_ids: Any) -> torch.Tensor:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.long, torch.int32, torch.int64):
        raise ValueError(f"input_ids must be an integer torch tensor (T,) or (B, T), got "
                         f"{getattr(input_ids, 'dtype', type(input_ids).__name__)}")
    ids = input_ids[None] if input_ids.dim() == 1 else input_ids
    if ids.dim() != 2 or ids.shape[0] == 0 or ids.shape[1] < 2:
        raise ValueError(f"input_ids must have shape (T,) or (B, T) with T >= 2 tokens, got {tuple(input_ids.shape)}")
    return ids.long()


@torch.no_grad()
def token_nll(model: nn.Module, input_ids: torch.Tensor, *, stride: int | None = None,
              max_length: int | None = None) -> torch.Tensor:
    """NLL (nats) of tokens ``1 .. T-1`` of every row, by the strided window: (B, T - 1) float32.

    Entry ``[b, t]`` is ``-log p(x_{t+1} | window context)`` for row ``b``; NaN for a token no window
    scores (the first token of each disjoint chunk when ``stride == max_length``).
    """
    ids = _check_ids(input_ids)
    max_length = model_max_length(model) if max_length is None else max_length
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
    stride = max_length if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= max_length:
        raise ValueError(f"stride must be an int in [1, max_length={max_length}], got {stride!r}")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(vocab, int) and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(f"input_ids must lie in [0, vocab_size={vocab}), got values in "
                         f"[{int(ids.min())}, {int(ids.max())}]")
    context = _context(model)
    if context is not None and max_length > context and ids.shape[1] > context:
        raise ValueError(f"max_length={max_length} exceeds the model's context of {context} positions")
    device = next(model.parameters()).device
    B, T = ids.shape
    nll = torch.full((B, T - 1), float("nan"))
    prev_end = 0
    for begin in range(0, T, stride):
        end = min(begin + max_length, T)
        window = ids[:, begin:end].to(device)  # (B, W)
        logits = logits_of(model, window)[:, :-1]  # (B, W-1, V): position j predicts window token j+1
        losses = F.cross_entropy(logits.transpose(1, 2), window[:, 1:], reduction="none")  # (B, W-1)
        # score only tokens prev_end .. end-1 (absolute); token t's loss sits at window column t - begin - 1
        first = max(prev_end, begin + 1)
        nll[:, first - 1:end - 1] = losses[:, first - begin - 1:].cpu()
        prev_end = end
        if end == T:
            break
    return nll


def _docs_weighted_mean(nll: torch.Tensor, stride: int, max_length: int) -> float:
    """The docs' average: each window's mean NLL weighed by ``(end - prev_end - 1) * B`` (see the module doc)."""
    B, T = nll.shape[0], nll.shape[1] + 1
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, T, stride):
        end = min(begin + max_length, T)
        first = max(prev_end, begin + 1)
        scored = nll[:, first - 1:end - 1].double()
        weight = (end - prev_end - 1) * B
        if scored.numel() and weight:
            total += float(scored.mean()) * weight
            count += weight
        prev_end = end
        if end == T:
            break
    if count == 0:
        raise ValueError("the strided window scored no token: give a longer input or a longer max_length")
    return total / count


def perplexity(model: nn.Module, input_ids: torch.Tensor, *, stride: int | None = None,
               max_length: int | None = None, weighting: str = "docs") -> float:
    """Perplexity of ``input_ids`` by windows of ``max_length`` tokens every ``stride`` tokens.

    ``max_length`` defaults to the model's context (``config.max_seq_len`` / ``max_position_embeddings``),
    ``stride`` to ``max_length`` (disjoint windows). ``input_ids`` (T,) or (B, T). ``weighting="docs"``
    equals the transformers docs' loop to rounding; ``"token"`` is ``exp(mean NLL)`` over the scored tokens.
    With one window (the text fits) both equal ``exp(loss)`` of a transformers forward with ``labels``.
    """
    if weighting not in ("docs", "token"):
        raise ValueError(f"weighting must be 'docs' or 'token', got {weighting!r}")
    was_training = model.training
    model.eval()
    try:
        nll = token_nll(model, input_ids, stride=stride, max_length=max_length)
    finally:
        model.train(was_training)
    if weighting == "token":
        return math.exp(float(nll.double().nanmean()))
    max_length = model_max_length(model) if max_length is None else max_length
    return math.exp(_docs_weighted_mean(nll, max_length if stride is None else stride, max_length))
