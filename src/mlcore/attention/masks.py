"""Attention masks: which keys each query may look at.

A mask here is a **bool** tensor, ``True`` = may attend, broadcastable to (B, H, Tq, Tk). The attention
functions turn it into an additive mask (``0`` / ``-inf``) added to the scores before the softmax.

- causal (autoregressive decoding, GPT): query i sees keys j <= i. When queries are the last Tq of Tk
  positions (a KV cache holds the first Tk - Tq), the mask is **bottom-right aligned**:
  j <= i + (Tk - Tq).
- padding: a batch of sequences of different lengths is padded to one length; pad keys are hidden.
- sliding window (Longformer, Beltagy et al. 2020; Mistral 7B, Jiang et al. 2023): a causal mask that also
  forgets keys more than ``window - 1`` positions back, i - window < j <= i -- the same rule as
  transformers' ``sliding_window_causal_mask_function`` (each query sees ``window`` keys, itself included).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["causal_mask", "padding_mask", "sliding_window_mask", "combine_masks"]


def _positions(Tq: int, Tk: int | None, device: torch.device | str | None) -> tuple[Tensor, Tensor, int]:
    """Column of absolute query positions (Tq, 1), row of key positions (1, Tk), and Tk."""
    Tk = Tq if Tk is None else Tk
    for name, n in (("Tq", Tq), ("Tk", Tk)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"{name} must be a non-negative int, got {n!r}")
    # Queries are the last Tq positions. With Tq > Tk the first Tq - Tk queries come before every key and see
    # nothing (an all-False row), as with ``is_causal`` and torch's ``causal_lower_right``.
    i = torch.arange(Tk - Tq, Tk, device=device).unsqueeze(1)
    j = torch.arange(Tk, device=device).unsqueeze(0)
    return i, j, Tk


def causal_mask(Tq: int, Tk: int | None = None, *, device: torch.device | str | None = None) -> Tensor:
    """Bool (Tq, Tk), True where query i may see key j: j <= i + (Tk - Tq) (bottom-right aligned).

    Equals ``torch.nn.attention.bias.causal_lower_right(Tq, Tk)`` for any Tq, Tk (rows with no key when Tq > Tk).
    """
    i, j, _ = _positions(Tq, Tk, device)
    return j <= i


def sliding_window_mask(
    Tq: int, Tk: int | None = None, *, window: int, device: torch.device | str | None = None
) -> Tensor:
    """Bool (Tq, Tk): causal and within the window, i - window < j <= i (positions bottom-right aligned).

    Matches transformers' Mistral/Qwen2 ``sliding_window`` (``kv_idx > q_idx - sliding_window``).
    """
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    i, j, _ = _positions(Tq, Tk, device)
    return (j <= i) & (j > i - window)


def padding_mask(
    attention_mask: Tensor | None = None, *, lengths: Tensor | None = None, T: int | None = None
) -> Tensor:
    """Bool (B, 1, 1, T): True at real tokens, False at padding; broadcasts over heads and queries.

    Give either ``attention_mask`` (B, T) of 1 = token / 0 = pad (any padding side, as tokenizers return
    it), or ``lengths`` (B,) for right-padded sequences (T defaults to max(lengths)).
    """
    if (attention_mask is None) == (lengths is None):
        raise ValueError("give exactly one of attention_mask (B, T) or lengths (B,)")
    # checked for both forms: T="3" beside an attention_mask of width 3 used to read "has T=3, but T=3 was given"
    if T is not None and (not isinstance(T, int) or isinstance(T, bool) or T < 0):
        raise ValueError(f"T must be an int >= 0, got {T!r}")
    if attention_mask is not None:
        if not isinstance(attention_mask, Tensor) or attention_mask.dim() != 2:
            shape = tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else type(attention_mask)
            raise ValueError(f"attention_mask must be a (B, T) tensor of 0/1, got {shape}")
        if T is not None and attention_mask.shape[1] != T:
            raise ValueError(f"attention_mask has T={attention_mask.shape[1]}, but T={T} was given")
        return attention_mask.bool()[:, None, None, :]
    if (not isinstance(lengths, Tensor) or lengths.dim() != 1 or lengths.numel() == 0
            or lengths.dtype.is_floating_point or lengths.dtype == torch.bool):
        raise ValueError(f"lengths must be a non-empty 1-D integer tensor (B,), got {lengths!r}")
    T = int(lengths.max()) if T is None else T
    if int(lengths.max()) > T or int(lengths.min()) < 0:
        raise ValueError(f"lengths must lie in [0, T={T}], got {lengths.tolist()}")
    keep = torch.arange(T, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
    return keep[:, None, None, :]


def combine_masks(*masks: Tensor | None) -> Tensor | None:
    """Combine masks: AND of bool masks, or the sum of additive masks (bool ones become 0 / -inf).

    ``None`` entries are skipped; with nothing left, returns None. Shapes broadcast.
    """
    present = [m for m in masks if m is not None]
    if not present:
        return None
    for idx, m in enumerate(present):
        if not isinstance(m, Tensor) or not (m.dtype == torch.bool or m.dtype.is_floating_point):
            raise ValueError(f"masks[{idx}] must be a bool or floating tensor, got {getattr(m, 'dtype', type(m))}")
    devices = {m.device for m in present}
    if len(devices) > 1:  # name the masks instead of torch's "Tensor on device meta is not on the expected device"
        raise ValueError(f"masks must be on one device, got {[str(m.device) for m in present]}")
    try:  # shapes only, no data: name the masks instead of torch's "size of tensor a must match" from inside & / +
        torch.broadcast_shapes(*(m.shape for m in present))
    except RuntimeError:
        raise ValueError(f"masks of shapes {[tuple(m.shape) for m in present]} do not broadcast together") from None
    if all(m.dtype == torch.bool for m in present):
        out = present[0]
        for m in present[1:]:
            out = out & m
        return out
    dtype = next(m.dtype for m in present if m.dtype != torch.bool)
    total = None
    for m in present:
        add = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(~m, float("-inf")) if m.dtype == torch.bool else m
        total = add if total is None else total + add
    return total
