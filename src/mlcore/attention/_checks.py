"""Input validation shared by every attention implementation (naive, flash, multi-head).

Attention computes ``softmax(scale * Q K^T + M) V`` (Vaswani et al., "Attention Is All You Need", 2017).
The checks here make every implementation reject the same bad inputs with the same messages, and turn
the two mask conventions of ``torch.nn.functional.scaled_dot_product_attention`` into one:

- a **bool** mask where ``True`` means "may attend" becomes an additive mask of ``0`` / ``-inf``;
- a **float** mask is already additive and is kept (cast to the compute dtype).
"""

from __future__ import annotations

from numbers import Real
from typing import Any

import torch
from torch import Tensor

__all__ = ["check_qkv", "prepare_mask", "check_generator"]


def check_qkv(q: Tensor, k: Tensor, v: Tensor) -> tuple[int, int, int, int, int, int, int]:
    """Validate query, key and value tensors and return their sizes ``(B, H, Hkv, Tq, Tk, D, Dv)``.

    q: (B, H, Tq, D); k: (B, Hkv, Tk, D); v: (B, Hkv, Tk, Dv), with ``H % Hkv == 0`` (GQA/MQA).
    All three must be floating point, of one dtype, on one device. Raises ``ValueError`` naming the
    argument, what was seen and what was expected.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, heads, T, head_dim), got shape {tuple(t.shape)}")
        if not t.dtype.is_floating_point:
            raise ValueError(f"{name} must have a floating dtype, got {t.dtype}")
    B, H, Tq, D = q.shape
    Bk, Hkv, Tk, Dk = k.shape
    Bv, Hv, Tv, Dv = v.shape
    if Bk != B:
        raise ValueError(f"k batch size {Bk} does not match q batch size {B} (k shape {tuple(k.shape)})")
    if Bv != B:
        raise ValueError(f"v batch size {Bv} does not match q batch size {B} (v shape {tuple(v.shape)})")
    if Hkv < 1 or H % Hkv != 0:
        raise ValueError(
            f"k has {Hkv} heads, which must divide the {H} query heads of q (H % Hkv == 0 for GQA/MQA)"
        )
    if Hv != Hkv:
        raise ValueError(f"v has {Hv} heads, expected {Hkv} like k")
    if Dk != D:
        raise ValueError(f"k head dim {Dk} does not match q head dim {D} (q {tuple(q.shape)}, k {tuple(k.shape)})")
    if Tv != Tk:
        raise ValueError(f"v length {Tv} does not match k length {Tk} (k {tuple(k.shape)}, v {tuple(v.shape)})")
    if k.dtype != q.dtype:
        raise ValueError(f"k dtype {k.dtype} does not match q dtype {q.dtype}")
    if v.dtype != q.dtype:
        raise ValueError(f"v dtype {v.dtype} does not match q dtype {q.dtype}")
    if k.device != q.device:
        raise ValueError(f"k is on device {k.device}, expected q's device {q.device}")
    if v.device != q.device:
        raise ValueError(f"v is on device {v.device}, expected q's device {q.device}")
    return B, H, Hkv, Tq, Tk, D, Dv


def prepare_mask(
    attn_mask: Tensor | None,
    *,
    B: int,
    H: int,
    Tq: int,
    Tk: int,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor | None:
    """Turn ``attn_mask`` into an additive float mask broadcastable to (B, H, Tq, Tk), or None.

    - bool: ``True`` = attend -> ``0``; ``False`` -> ``-inf``.
    - floating: additive, kept as is (cast to ``dtype``).
    Any shape that broadcasts to (B, H, Tq, Tk) is accepted ((Tq, Tk), (B, 1, 1, Tk), ...); the result
    keeps that shape (it is not expanded). Raises ``ValueError`` naming ``attn_mask`` otherwise.
    """
    if attn_mask is None:
        return None
    if not isinstance(attn_mask, Tensor):
        raise ValueError(f"attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}")
    target = (B, H, Tq, Tk)
    shape = tuple(attn_mask.shape)
    ok = attn_mask.dim() <= 4 and all(s in (1, t) for s, t in zip(reversed(shape), reversed(target)))
    if not ok:
        raise ValueError(f"attn_mask of shape {shape} is not broadcastable to (B, H, Tq, Tk) = {target}")
    if attn_mask.device != torch.device(device):
        raise ValueError(f"attn_mask is on device {attn_mask.device}, expected {torch.device(device)}")
    if attn_mask.dtype == torch.bool:
        out = torch.zeros(shape, dtype=dtype, device=device)
        return out.masked_fill(~attn_mask, float("-inf"))
    if attn_mask.dtype.is_floating_point:
        return attn_mask.to(dtype)
    raise ValueError(f"attn_mask must be bool (True = attend) or floating (additive), got {attn_mask.dtype}")


def check_dropout_and_scale(dropout_p: Any, scale: Any, is_causal: Any = False) -> None:
    """``dropout_p`` a real in [0, 1); ``scale`` None or a real (a 0-d tensor too, as torch takes one);
    ``is_causal`` a bool (as torch's SDPA demands: a string such as ``"no"`` would otherwise read as True)."""
    if not isinstance(is_causal, bool):
        raise ValueError(f"is_causal must be a bool, got {is_causal!r} ({type(is_causal).__name__})")
    if (isinstance(dropout_p, bool) or not isinstance(dropout_p, (Real, torch.Tensor))
            or (isinstance(dropout_p, torch.Tensor) and dropout_p.numel() != 1) or not 0.0 <= float(dropout_p) < 1.0):
        raise ValueError(f"dropout_p must be a number in [0, 1), got {dropout_p!r}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (Real, torch.Tensor))
                              or (isinstance(scale, torch.Tensor) and scale.numel() != 1)):
        raise ValueError(f"scale must be None or a number, got {scale!r}")


def check_generator(generator: Any) -> None:
    """``generator`` None or a ``torch.Generator``.

    Checked up front, whatever ``dropout_p`` is: the flash kernel reads ``generator.device`` (an int gave an
    AttributeError) and the naive one hands it to ``torch.rand`` (a TypeError that does not say which argument
    of the attention call was wrong); torch's own ``dropout(generator=...)`` refuses a non-generator too.
    """
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be None or a torch.Generator, got {generator!r} ({type(generator).__name__})")
