"""Next-token cross-entropy, the loss of causal language modelling.

For a sequence ``x_1 .. x_T`` the model's logits at position ``t`` predict ``x_{t+1}``, so the loss is

    L = - (1 / N) * sum over counted t of log softmax(logits_t)[x_{t+1}]

where a position counts when its *target* ``x_{t+1}`` is a real token (``attention_mask == 1``) and, for
supervised fine-tuning, lies in the part the model should learn (``loss_mask == 1``, e.g. the answer and
not the prompt). Uncounted targets get the label ``-100``, the ``ignore_index`` of
``torch.nn.functional.cross_entropy`` and of Hugging Face's ``ForCausalLMLoss``. ``exp(L)`` is the perplexity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def causal_lm_labels(
    input_ids: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    loss_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Labels ``(B, T)`` for :func:`causal_lm_loss_sum`: the input ids with ``-100`` wherever a token is
    padding (``attention_mask == 0``) or masked out of the loss (``loss_mask == 0``). Not yet shifted."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
    labels = input_ids.clone()
    for name, mask in (("attention_mask", attention_mask), ("loss_mask", loss_mask)):
        if mask is None:
            continue
        if mask.shape != input_ids.shape:
            raise ValueError(f"{name} must have the shape of input_ids {tuple(input_ids.shape)}, "
                             f"got {tuple(mask.shape)}")
        labels = labels.masked_fill(mask == 0, IGNORE_INDEX)
    return labels


def causal_lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token negative log-likelihood and the number of targets it sums over.

    Args:
        logits: ``(B, T, V)``; position ``t`` predicts ``labels[:, t + 1]``.
        labels: ``(B, T)`` token ids, ``-100`` where nothing is to be predicted.

    Returns ``(sum_nll, count)``; dividing by a count gathered over several micro-batches makes gradient
    accumulation equal one big batch even when the micro-batches hold different numbers of targets.
    """
    if not isinstance(logits, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ValueError(f"logits and labels must be tensors, got {type(logits).__name__} and "
                         f"{type(labels).__name__}")
    if labels.dtype != torch.long:  # cross_entropy wants int64 class ids; a float label is not an id
        raise ValueError(f"labels must be a LongTensor of token ids, got dtype {labels.dtype}")
    bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= logits.size(-1)))
    if bool(bad.any()):
        raise ValueError(f"labels must be token ids in [0, {logits.size(-1)}) or {IGNORE_INDEX} (ignored), got "
                         f"{labels[bad].unique()[:5].tolist()}")
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits must be (B, T, V) and labels (B, T), got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    shift_logits = logits[:, :-1, :].reshape(-1, logits.size(-1)).float()   # (B * (T-1), V)
    shift_labels = labels[:, 1:].reshape(-1).to(shift_logits.device)        # (B * (T-1),)
    total = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total, int((shift_labels != IGNORE_INDEX).sum())


def causal_lm_loss(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    loss_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean next-token cross-entropy of ``logits (B, T, V)`` against ``input_ids (B, T)`` (see module doc)."""
    labels = causal_lm_labels(input_ids, attention_mask=attention_mask, loss_mask=loss_mask)
    total, count = causal_lm_loss_sum(logits, labels)
    if count == 0:
        raise ValueError("no target token is counted: every label is padding or masked out by loss_mask")
    return total / count
