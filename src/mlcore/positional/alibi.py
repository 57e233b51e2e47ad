"""ALiBi: attention with linear biases (Press, Smith & Lewis, 2022, "Train Short, Test Long").

No position enters the embeddings. Instead every head ``h`` adds a penalty linear in the query-key distance to
its attention logits:

    score(i, j) = q_i . k_j / sqrt(d) + m_h * (j - i),          j <= i (causal)

The slopes form a geometric sequence. For ``n`` a power of two, ``m_h = 2^(-8h/n)`` for ``h = 1..n``
(start ``2^(-8/n)``, ratio the same). For other ``n``, the paper's code takes the ``2^floor(log2 n)`` slopes of
the nearest lower power of two and appends every other slope of the ``2 * 2^floor(log2 n)`` sequence
(the odd powers) until there are ``n``. BLOOM (transformers' ``build_alibi_tensor``) does exactly this.
"""

from __future__ import annotations

import math

import torch


def _power_of_two_slopes(n: int, count: int, step: int = 1) -> torch.Tensor:
    """``start^p`` for p = 1, 1 + step, ... (``count`` of them), ``start = 2^(-8/n)``, in float32.

    Rounded as BLOOM does it: the start is rounded to float32 and raised to integer powers in float32, so the
    slopes are bit-identical to transformers' ``build_alibi_tensor`` (a float64 power would differ by 1 ulp).
    """
    start = torch.tensor(2.0 ** (-8.0 / n), dtype=torch.float32)  # = 2^(-(2^-(log2(n) - 3)))
    powers = torch.arange(1, 1 + step * count, step, dtype=torch.int32)
    return torch.pow(start, powers)


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Per-head ALiBi slopes ``(H,)`` float32, in the head order of the paper's code and BLOOM.

    For ``H`` a power of two the slopes decrease: ``2^(-8/H), 2^(-16/H), ..., 2^(-8)``. Otherwise they are not
    sorted: the ``n = 2^floor(log2 H)`` decreasing slopes of the lower power of two come first, then the odd powers
    ``2^(-4/n), 2^(-12/n), ...`` (themselves decreasing) for the remaining ``H - n`` heads. For ``H = 6``:
    ``[0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]``, so the steepest slope belongs to head 4, not head 0.
    """
    if not isinstance(n_heads, int) or isinstance(n_heads, bool) or n_heads < 1:
        raise ValueError(f"n_heads must be an int >= 1, got {n_heads!r}")
    closest = 2 ** math.floor(math.log2(n_heads))
    slopes = _power_of_two_slopes(closest, closest)
    if closest != n_heads:
        # odd powers of 2^(-8 / 2n'), interleaving the first set
        extra = _power_of_two_slopes(2 * closest, min(closest, n_heads - closest), step=2)
        slopes = torch.cat((slopes, extra))
    return slopes


def alibi_bias(
    n_heads: int,
    Tq: int,
    Tk: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Additive ALiBi bias ``(H, Tq, Tk)``: ``slope_h * (j - i_aligned)`` with ``i_aligned = i + Tk - Tq``.

    Queries are aligned bottom-right against the keys (the last query is the last key), as in KV-cached
    decoding where ``Tq`` new queries follow ``Tk - Tq`` cached keys. The bias is 0 on the aligned diagonal and
    negative for past keys; entries for future keys (positive) are meant to be removed by a causal mask.
    Softmax ignores a constant per row, so this equals BLOOM's ``slope * j`` under a causal mask.
    """
    for name, v in (("Tq", Tq), ("Tk", Tk)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype (slopes are fractions), got {dtype!r}")
    if Tq > Tk:
        raise ValueError(f"Tq must be <= Tk (queries are the last Tq of the Tk positions), got Tq={Tq}, Tk={Tk}")
    slopes = alibi_slopes(n_heads).to(device=device)
    i = torch.arange(Tq, device=device) + (Tk - Tq)  # (Tq,) query positions among the keys
    j = torch.arange(Tk, device=device)  # (Tk,)
    distance = (j[None, :] - i[:, None]).float()  # (Tq, Tk): j - i, <= 0 for visible keys
    return (slopes[:, None, None] * distance[None]).to(dtype)
