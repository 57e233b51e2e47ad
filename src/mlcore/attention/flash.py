"""FlashAttention in plain PyTorch: tiled attention with an online softmax.

References
----------
- M. Milakov, N. Gimelshein, "Online normalizer calculation for softmax" (2018): a running max and a
  running sum let a softmax be computed in one pass over blocks.
- T. Dao et al., "FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness" (2022).
- T. Dao, "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning" (2023):
  the outer loop runs over query blocks, the inner loop over key blocks; the backward pass recomputes
  the probabilities from the saved row statistics instead of storing them.

The forward pass, for one block of queries Q_i (rows) and key/value blocks K_j, V_j::

    S_ij   = scale * Q_i K_j^T + M_ij                      (M: user mask and causal mask, 0 or -inf)
    m_new  = max(m, rowmax(S_ij))
    P_ij   = exp(S_ij - m_new)
    l      = exp(m - m_new) * l + rowsum(P_ij)
    acc    = exp(m - m_new) * acc + P_ij V_j
    O_i    = acc / l,      m_i, log(l_i)                   (the row's max and log-sum-exp past it)

Only ``O`` (B, H, Tq, Dv), ``m`` and ``log l`` (B, H, Tq) are saved for backward, so memory is linear in T;
FA-2 saves their sum ``L = m + log l`` instead, but when every score of a row is huge (an additive mask of
``finfo.min`` or -1e9 on the whole row, as transformers' masks put on a padding query) ``m + log l`` rounds
back to ``m`` and ``exp(S - L)`` would recompute P as 1 for every key instead of 1 / n: wrong gradients.
Backward computes ``P = exp((S - m) - log l)``, where ``S - m`` is exact.

the (Tq, Tk) matrix of scores never exists. The backward pass is in ``flash_backward.py``.

Grouped-query attention (GQA/MQA): the G = H / Hkv query heads that share one key/value head are
packed as extra rows of one matrix, ``(B, Hkv, G * block_q, D)``, so every key/value block is read once
per group and never copied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import check_dropout_and_scale, check_generator, check_qkv, prepare_mask

__all__ = ["flash_attention"]


@dataclass
class Tiling:
    """Everything that decides what one (query block, key block) tile sees; shared by forward and backward.

    ``mask`` is an additive float mask broadcastable to (B, H, Tq, Tk) as 4 dims; ``offset`` is
    ``Tk - Tq`` when causal (query i sees keys j <= i + offset, bottom-right aligned) else None.
    """

    B: int
    Hkv: int
    G: int
    Tq: int
    Tk: int
    block_q: int
    block_k: int
    scale: float
    offset: int | None
    mask: Tensor | None
    dropout_p: float
    seed: int
    acc_dtype: torch.dtype = torch.float32  # fp32 accumulation (fp64 for fp64 inputs)

    def query_blocks(self) -> list[tuple[int, int]]:
        """All query blocks [i0, i1)."""
        return [(i0, min(i0 + self.block_q, self.Tq)) for i0 in range(0, self.Tq, self.block_q)]

    def key_blocks_for(self, i0: int, i1: int) -> list[tuple[int, int]]:
        """Key blocks [j0, j1) that query rows [i0, i1) can see; blocks wholly above the causal diagonal are skipped."""
        end = self.Tk if self.offset is None else max(0, min(self.Tk, i1 + self.offset))
        return [(j0, min(j0 + self.block_k, self.Tk)) for j0 in range(0, end, self.block_k)]

    def query_blocks_for(self, j0: int, j1: int) -> list[tuple[int, int]]:
        """Query blocks that see at least one key of [j0, j1) (the backward pass loops this way)."""
        return [
            (i0, i1) for i0, i1 in self.query_blocks() if self.offset is None or i1 - 1 + self.offset >= j0
        ]

    def bias(self, i0: int, i1: int, j0: int, j1: int, device: torch.device) -> Tensor | None:
        """Additive bias of one tile, broadcastable to (B, Hkv, G, bq, bk), or None if nothing is masked.

        The user's mask is sliced, never copied whole; the causal part is built from indices for
        tiles that straddle the diagonal only.
        """
        bias = None
        if self.mask is not None:
            m = self.mask
            m = m[:, :, i0:i1] if m.shape[2] > 1 else m
            m = m[:, :, :, j0:j1] if m.shape[3] > 1 else m
            if m.shape[1] > 1:  # one mask per query head: split heads into (Hkv, G)
                bias = m.reshape(m.shape[0], self.Hkv, self.G, m.shape[2], m.shape[3])
            else:
                bias = m.unsqueeze(1)
        if self.offset is not None and j1 - 1 > i0 + self.offset:  # tile straddles the diagonal
            rows = torch.arange(i0, i1, device=device).unsqueeze(1)
            cols = torch.arange(j0, j1, device=device).unsqueeze(0)
            causal = torch.zeros(rows.shape[0], cols.shape[1], dtype=self.acc_dtype, device=device)
            causal = causal.masked_fill(cols > rows + self.offset, float("-inf"))
            bias = causal if bias is None else bias + causal
        return bias

    def dropout_keep(self, i0: int, j0: int, shape: tuple[int, ...], device: torch.device) -> Tensor:
        """Dropout multiplier Z / (1 - p) of one tile, Z ~ Bernoulli(1 - p), shape (B, Hkv, G * bq, bk).

        The generator is seeded from (seed, tile index), so the backward pass regenerates exactly the
        mask the forward pass used without storing it.
        """
        n_kb = -(-self.Tk // self.block_k)
        tile = (i0 // self.block_q) * n_kb + j0 // self.block_k
        gen = torch.Generator(device=device)
        gen.manual_seed((self.seed + 1_000_003 * tile) % (2**63 - 1))
        keep = torch.rand(shape, generator=gen, device=device) >= self.dropout_p
        return keep.to(self.acc_dtype) / (1.0 - self.dropout_p)

    def scores(self, qb: Tensor, kb: Tensor, i0: int, i1: int, j0: int, j1: int) -> Tensor:
        """S = scale * Q_i K_j^T + M_ij for one tile: (B, Hkv, G * bq, D) x (B, Hkv, bk, D) -> (B, Hkv, G * bq, bk)."""
        s = torch.matmul(qb, kb.transpose(-1, -2)) * self.scale
        bias = self.bias(i0, i1, j0, j1, qb.device)
        if bias is not None:
            s5 = s.view(self.B, self.Hkv, self.G, i1 - i0, j1 - j0) + bias
            s = s5.reshape(self.B, self.Hkv, self.G * (i1 - i0), j1 - j0)
        return s


def query_tile(q5: Tensor, i0: int, i1: int, dtype: torch.dtype) -> Tensor:
    """Rows [i0, i1) of all G query heads of a group as one matrix: (B, Hkv, G, Tq, D) -> (B, Hkv, G*bq, D)."""
    B, Hkv, G, _, D = q5.shape
    return q5[:, :, :, i0:i1].reshape(B, Hkv, G * (i1 - i0), D).to(dtype)


def flash_forward(q5: Tensor, k: Tensor, v: Tensor, t: Tiling) -> tuple[Tensor, Tensor, Tensor]:
    """Tiled forward pass (FA-2 order: query blocks outside, key blocks inside).

    q5: (B, Hkv, G, Tq, D); k: (B, Hkv, Tk, D); v: (B, Hkv, Tk, Dv).
    Returns O (B, Hkv, G, Tq, Dv) in q's dtype and, each (B, Hkv, G, Tq) in ``t.acc_dtype``, the row max m
    and log l, l = sum_j exp(S_ij - m) (m = 0 and log l = +inf for a row that sees no key, so that
    exp((S - m) - log l) = 0 there in backward).
    """
    B, Hkv, G, Tq, _ = q5.shape
    Dv, acc, dev = v.shape[-1], t.acc_dtype, q5.device
    out = torch.zeros(B, Hkv, G, Tq, Dv, dtype=q5.dtype, device=dev)
    row_max = torch.zeros((B, Hkv, G, Tq), dtype=acc, device=dev)
    row_log_l = torch.full((B, Hkv, G, Tq), float("inf"), dtype=acc, device=dev)
    for i0, i1 in t.query_blocks():
        bq = i1 - i0
        qb = query_tile(q5, i0, i1, acc)  # (B, Hkv, G*bq, D)
        m = torch.full((B, Hkv, G * bq, 1), float("-inf"), dtype=acc, device=dev)  # running row max
        l = torch.zeros(B, Hkv, G * bq, 1, dtype=acc, device=dev)  # running row sum of exp
        o_acc = torch.zeros(B, Hkv, G * bq, Dv, dtype=acc, device=dev)  # running un-normalised output
        for j0, j1 in t.key_blocks_for(i0, i1):
            s = t.scores(qb, k[:, :, j0:j1].to(acc), i0, i1, j0, j1)  # (B, Hkv, G*bq, bk)
            m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
            m_safe = m_new.masked_fill(m_new == float("-inf"), 0.0)  # all -inf so far: keep exp() finite
            p = torch.exp(s - m_safe)
            alpha = torch.exp(m - m_safe)  # rescales what was accumulated under the old max
            l = alpha * l + p.sum(dim=-1, keepdim=True)
            if t.dropout_p > 0.0:
                p = p * t.dropout_keep(i0, j0, tuple(p.shape), dev)
            o_acc = alpha * o_acc + torch.matmul(p, v[:, :, j0:j1].to(acc))
            m = m_new
        # l == 0 only for a row whose scores are all -inf (else its max term is exp(0) = 1); NaN scores (a NaN
        # in q, k or the mask, an infinite scale) leave l NaN, and NaN must come out, as torch's SDPA gives it.
        seen = l != 0
        o = torch.where(seen, o_acc / torch.where(seen, l, 1.0), 0.0)  # a row that sees nothing -> zeros
        out[:, :, :, i0:i1] = o.view(B, Hkv, G, bq, Dv).to(q5.dtype)
        row_max[:, :, :, i0:i1] = torch.where(seen, m, 0.0).view(B, Hkv, G, bq)
        row_log_l[:, :, :, i0:i1] = torch.where(seen, torch.log(torch.where(seen, l, 1.0)), float("inf")).view(
            B, Hkv, G, bq)
    return out, row_max, row_log_l


class FlashAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: saves q, k, v, O and the row statistics only; backward recomputes P tile by tile.

    First derivatives only: a backward with ``create_graph=True`` (a gradient penalty, a Hessian-vector
    product, ``gradgradcheck``) is refused. (``once_differentiable`` alone does not: with a ``grad_output``
    that needs no grad it returns gradients without a graph, so a penalty on them is silently a constant.)
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, q5: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, tiling: Tiling, use_triton: bool
    ) -> Tensor:
        """``mask`` is ``tiling.mask`` again, passed here so that autograd can give it a gradient."""
        if use_triton:
            from .triton_kernel import triton_flash_forward

            out, lse = triton_flash_forward(q5, k, v, tiling)
            ctx.save_for_backward(q5, k, v, out, lse)
        else:
            out, row_max, row_log_l = flash_forward(q5, k, v, tiling)
            ctx.save_for_backward(q5, k, v, out, row_max, row_log_l)
        ctx.tiling = tiling
        ctx.use_triton = use_triton
        return out

    @staticmethod
    def backward(ctx, d_out: Tensor):  # type: ignore[override]
        from .flash_backward import flash_backward

        if torch.is_grad_enabled():  # grad mode is on inside backward only under create_graph=True
            raise RuntimeError(
                "flash_attention has no second derivative (a backward with create_graph=True); use "
                "mlcore.attention.scaled_dot_product_attention, whose backward is differentiable"
            )
        if ctx.use_triton:  # the Triton path has no mask and no dropout
            from .triton_kernel import triton_flash_backward

            q5, k, v, out, lse = ctx.saved_tensors
            dq, dk, dv = triton_flash_backward(q5, k, v, out, lse, d_out, ctx.tiling)
            return dq, dk, dv, None, None, None
        q5, k, v, out, row_max, row_log_l = ctx.saved_tensors
        dq, dk, dv, dmask = flash_backward(
            q5, k, v, out, row_max, row_log_l, d_out, ctx.tiling, mask_grad=ctx.needs_input_grad[3]
        )
        return dq, dk, dv, dmask, None, None


def _triton_supported(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float) -> bool:
    """The Triton forward covers CUDA fp16/bf16, D = Dv in {64, 128}, no mask (causal is fine), no dropout."""
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16) or mask is not None or dropout_p > 0:
        return False
    if q.shape[-1] not in (64, 128) or v.shape[-1] != q.shape[-1]:
        return False
    if not all(_slice_offsets_fit_int32(x) for x in (q, k, v)):
        return False
    from .triton_kernel import triton_available

    return triton_available()


def _slice_offsets_fit_int32(x: Tensor) -> bool:
    """True when every element offset inside one (batch, head) slice of x (B, heads, T, D) fits int32.

    The Triton kernels add int64 batch / head base offsets to int32 row offsets ``t * stride_T + d * stride_D``;
    a (B, T, heads, D) layout seen through ``transpose(1, 2)`` has ``stride_T = heads * D``, so a long enough
    sequence would wrap those (e.g. T > 2**19 with 32 heads of 128). Such inputs take the PyTorch path.
    """
    _, _, T, D = x.shape
    return (T - 1) * abs(x.stride(2)) + (D - 1) * abs(x.stride(3)) < 2**31


def flash_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    block_q: int = 64,
    block_k: int = 64,
    use_triton: bool | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """softmax(scale * q k^T + mask) v, computed tile by tile with an online softmax (FlashAttention-2).

    Same arguments and values as ``mlcore.attention.naive.scaled_dot_product_attention``:

    - q: (B, H, Tq, D); k: (B, Hkv, Tk, D); v: (B, Hkv, Tk, Dv) with H % Hkv == 0 (GQA/MQA). Returns (B, H, Tq, Dv).
    - attn_mask: bool (True = attend) or additive float, broadcastable to (B, H, Tq, Tk). It is sliced per
      tile; a float mask that requires grad gets one (dM = dS, summed over its broadcast dims).
    - is_causal: query i sees keys j <= i + Tk - Tq (bottom-right aligned). Combines with attn_mask.
    - scale: defaults to 1 / sqrt(D). A row that may attend to nothing yields zeros, never NaN.
    - dropout_p: dropout on the attention probabilities, as in torch SDPA (applied whenever p > 0). The
      per-tile masks come from one seed drawn from ``generator`` (default: torch's global generator, so
      ``torch.manual_seed`` makes it reproducible) and are regenerated, not stored, in backward. The values
      differ from the naive version's dropout (different random streams), the distribution is the same.
    - block_q, block_k: tile sizes. use_triton: None picks the Triton kernel when supported (CUDA, fp16/bf16,
      D in {64, 128}, no mask, no dropout); False forces plain PyTorch; True demands Triton.

    Saved for backward: q, k, v, O and the row max and log-sum-exp (B, H, Tq) -- memory linear in T.
    First derivatives only: a backward with ``create_graph=True`` raises (the naive version has second ones).
    """
    B, H, Hkv, Tq, Tk, D, Dv = check_qkv(q, k, v)
    for name, value in (("block_q", block_q), ("block_k", block_k)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    check_dropout_and_scale(dropout_p, scale, is_causal)
    check_generator(generator)
    if use_triton is not None and not isinstance(use_triton, bool):  # "no" would read as True (demand Triton)
        raise ValueError(f"use_triton must be None or a bool, got {use_triton!r} ({type(use_triton).__name__})")
    acc_dtype = torch.promote_types(q.dtype, torch.float32)
    mask = prepare_mask(attn_mask, B=B, H=H, Tq=Tq, Tk=Tk, dtype=acc_dtype, device=q.device)
    if mask is not None:
        while mask.dim() < 4:
            mask = mask.unsqueeze(0)
    G = H // Hkv
    seed = 0
    if dropout_p > 0:
        gen_device = generator.device if generator is not None else "cpu"
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64, generator=generator, device=gen_device))
    tiling = Tiling(
        B=B, Hkv=Hkv, G=G, Tq=Tq, Tk=Tk, block_q=block_q, block_k=block_k,
        scale=float(scale) if scale is not None else (1.0 / math.sqrt(D) if D > 0 else 1.0),
        offset=(Tk - Tq) if is_causal else None, mask=mask, dropout_p=float(dropout_p), seed=seed,
        acc_dtype=acc_dtype,
    )  # fmt: skip
    supported = _triton_supported(q, k, v, mask, dropout_p)
    if use_triton and not supported:
        raise ValueError(
            "use_triton=True needs CUDA, triton, fp16/bf16, D = Dv in {64, 128}, no attn_mask, no dropout and "
            "(T - 1) * stride_T + (D - 1) * stride_D < 2**31 for q, k and v; "
            f"got device={q.device}, dtype={q.dtype}, D={D}, Dv={Dv}, mask={'yes' if mask is not None else 'no'}, "
            f"dropout_p={dropout_p}"
        )
    q5 = q.reshape(B, Hkv, G, Tq, D)  # head h = hkv * G + g uses key/value head hkv: a view, no copy of K/V
    out5 = FlashAttentionFunction.apply(
        q5, k, v, mask, tiling, bool(supported if use_triton is None else use_triton)
    )
    return out5.reshape(B, H, Tq, Dv)
