"""FlashAttention-2 forward pass as a Triton kernel (CUDA; optional dependency ``triton``).

Reference: T. Dao, "FlashAttention-2" (2023), Algorithm 1; the same tiled online softmax as
``flash.py`` (read that file first), with one program per (query block, batch * head):

    for each key block j (up to the causal diagonal):
        S     = (Q_i K_j^T) * scale * log2(e)             (base-2 logits: exp2 is the fast instruction)
        m_new = max(m, rowmax(S));  P = exp2(S - m_new)
        l     = exp2(m - m_new) * l + rowsum(P)
        acc   = exp2(m - m_new) * acc + P V_j              (fp32 accumulators, fp16/bf16 matmul inputs)
    O_i = acc / l;   L_i = (m + log2(l)) * ln(2)          (natural-log LSE, what the backward pass needs)

GQA/MQA: query head h reads key/value head h // G through strides; nothing is copied.
Rows that see no key get O = 0 and L = +inf, as in the PyTorch version. The backward pass (FA-2
Algorithm 2, the same equations as ``flash_backward.py``) is two more kernels: one program per key block
accumulates dK and dV, one per query block accumulates dQ, so no atomics are needed.

``triton`` is imported lazily: this module imports fine without it, and ``triton_available()`` says
whether the kernel can run. Under ``TRITON_INTERPRET=1`` the kernel also runs on CPU tensors (slowly),
which is how the tests check it without a GPU.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import torch
from torch import Tensor

from .flash import Tiling

__all__ = ["triton_available", "triton_flash_backward", "triton_flash_forward"]

_LOG2E = 1.0 / math.log(2.0)


def triton_available() -> bool:
    """True if ``triton`` can be imported."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=2)
def _build_kernel(interpret: bool) -> tuple[Any, Any]:
    """Define the kernel on first use (so ``import triton`` happens only then); one per interpreter mode.

    Returns the plain kernel and, on a real GPU, the same kernel autotuned over a few tile shapes per
    (Tq, Tk, D, causal) -- the best tiles differ across GPUs and head dims (None under the interpreter).
    """
    import triton
    import triton.language as tl

    @triton.jit
    def _flash_fwd(
        Q, K, V, O, L,
        sqb, sqh, sqg, sqt, sqd,
        skb, skh, skt, skd,
        svb, svh, svt, svd,
        H, G, Tq, Tk, offset, qk_scale,
        IS_CAUSAL: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        pid_m = tl.program_id(0)
        # int64: the batch / head base offsets (b * sqb, pid_bh * Tq * D) pass 2**31 elements on large inputs, and
        # int32 arithmetic would wrap to a negative address (an out-of-bounds read or a silently wrong row)
        pid_bh = tl.program_id(1).to(tl.int64)
        b = pid_bh // H
        h = pid_bh % H
        hkv = h // G
        g = h % G
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, D)
        q_base = Q + b * sqb + hkv * sqh + g * sqg
        k_base = K + b * skb + hkv * skh
        v_base = V + b * svb + hkv * svh
        q = tl.load(q_base + rows[:, None] * sqt + offs_d[None, :] * sqd, mask=rows[:, None] < Tq, other=0.0)

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
        hi = Tk
        if IS_CAUSAL:  # keys beyond the last row's diagonal are never visited
            hi = tl.minimum(Tk, tl.maximum(0, (pid_m + 1) * BLOCK_M + offset))
        for start_n in range(0, hi, BLOCK_N):
            cols = start_n + offs_n
            k = tl.load(
                k_base + cols[None, :] * skt + offs_d[:, None] * skd, mask=cols[None, :] < Tk, other=0.0
            )
            s = tl.dot(q, k) * qk_scale  # (BLOCK_M, BLOCK_N), base-2 logits
            valid = cols[None, :] < Tk
            if IS_CAUSAL:
                valid = valid & (cols[None, :] <= rows[:, None] + offset)
            s = tl.where(valid, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp2(s - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(
                v_base + cols[:, None] * svt + offs_d[None, :] * svd, mask=cols[:, None] < Tk, other=0.0
            )
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new

        seen = l_i != 0.0  # NaN scores leave l NaN: NaN comes out, as from torch SDPA (not zeros)
        l_safe = tl.where(seen, l_i, 1.0)
        out = tl.where(seen[:, None], acc / l_safe[:, None], 0.0)
        lse = tl.where(seen, (m_i + tl.log2(l_safe)) * 0.6931471805599453, float("inf"))
        o_base = O + pid_bh * Tq * D  # O is contiguous (B, Hkv, G, Tq, D) == (B*H, Tq, D)
        tl.store(
            o_base + rows[:, None] * D + offs_d[None, :], out.to(O.dtype.element_ty), mask=rows[:, None] < Tq
        )
        tl.store(L + pid_bh * Tq + rows, lse, mask=rows < Tq)

    if interpret:
        return _flash_fwd, None
    tiles = [
        (128, 64, 4, 3),
        (128, 64, 8, 3),
        (128, 128, 8, 2),
        (128, 32, 4, 4),
        (64, 64, 4, 3),
        (64, 128, 4, 3),
    ]
    configs = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st) for bm, bn, w, st in tiles
    ]
    return _flash_fwd, triton.autotune(configs=configs, key=["Tq", "Tk", "D", "IS_CAUSAL"])(_flash_fwd)


def triton_flash_forward(
    q5: Tensor, k: Tensor, v: Tensor, t: Tiling, *, autotune: bool = True
) -> tuple[Tensor, Tensor]:
    """Run the Triton forward. q5: (B, Hkv, G, Tq, D); k, v: (B, Hkv, Tk, D).

    Returns O (B, Hkv, G, Tq, D) in q's dtype and L (B, Hkv, G, Tq) in fp32, like ``flash.flash_forward``.
    The caller checks support (D in {64, 128}, no mask, no dropout); fp16/bf16 on CUDA, any float under
    the interpreter. ``autotune=False`` uses one fixed tile shape (128 x 64) instead of autotuning on CUDA.
    """
    B, Hkv, G, Tq, D = q5.shape
    Tk = k.shape[2]
    if t.mask is not None or t.dropout_p > 0.0 or v.shape[-1] != D or D not in (16, 32, 64, 128):
        raise ValueError(
            f"the Triton kernel takes no mask, no dropout and D = Dv in {{16, 32, 64, 128}}; got D={D}"
        )
    kernel, tuned = _build_kernel(_interpreting())
    out = torch.empty(B, Hkv, G, Tq, D, dtype=q5.dtype, device=q5.device)
    lse = torch.empty(B, Hkv, G, Tq, dtype=torch.float32, device=q5.device)
    args = (
        q5, k, v, out, lse, *q5.stride(), *k.stride(), *v.stride(),
        Hkv * G, G, Tq, Tk, 0 if t.offset is None else t.offset, t.scale * _LOG2E,
    )  # fmt: skip
    if tuned is not None and q5.is_cuda and autotune:
        grid = lambda meta: (triton_cdiv(Tq, meta["BLOCK_M"]), B * Hkv * G)  # noqa: E731
        tuned[grid](*args, IS_CAUSAL=t.offset is not None, D=D)
        return out, lse
    block_m, block_n = (128, 64) if q5.is_cuda else (32, 32)  # small tiles keep the CPU interpreter quick
    kernel[(triton_cdiv(Tq, block_m), B * Hkv * G)](
        *args, IS_CAUSAL=t.offset is not None, D=D, BLOCK_M=block_m, BLOCK_N=block_n,
        num_warps=8 if D > 64 else 4, num_stages=3,
    )  # fmt: skip
    return out, lse


@functools.lru_cache(maxsize=2)
def _build_backward_kernels(interpret: bool) -> tuple[Any, Any]:
    """FA-2 backward (Algorithm 2) as two kernels, so that no two programs write the same output:

    - ``_dkdv``: one program per (key block, batch * kv head) walks every query head of its group and
      every query block that sees it: dV_j += P^T dO, dK_j += scale * dS^T Q (GQA sums inside the program);
    - ``_dq``: one program per (query block, batch * head) walks the key blocks: dQ_i += scale * dS K.

    Both recompute P = exp(S - L) and use dS = P * (dO V^T - Delta), Delta_i = rowsum(dO_i * O_i).
    """
    import triton
    import triton.language as tl

    @triton.jit
    def _dkdv(
        Q, K, V, DO, L, DELTA, DK, DV,
        sqb, sqh, sqg, sqt, sqd,
        skb, skh, skt, skd,
        svb, svh, svt, svd,
        sdb, sdh, sdg, sdt, sdd,
        Hkv, G, Tq, Tk, offset, qk_scale,
        IS_CAUSAL: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        pid_n = tl.program_id(0)
        pid_bh = tl.program_id(1).to(tl.int64)  # b * Hkv + hkv; int64 as in _flash_fwd (base offsets past 2**31)
        b = pid_bh // Hkv
        hkv = pid_bh % Hkv
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, D)
        col_ok = cols[:, None] < Tk
        k = tl.load(
            K + b * skb + hkv * skh + cols[:, None] * skt + offs_d[None, :] * skd, mask=col_ok, other=0.0
        )
        v = tl.load(
            V + b * svb + hkv * svh + cols[:, None] * svt + offs_d[None, :] * svd, mask=col_ok, other=0.0
        )
        dk = tl.zeros([BLOCK_N, D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, D], dtype=tl.float32)
        lo = 0
        if IS_CAUSAL:  # query rows before the diagonal never see this key block
            lo = tl.maximum(0, pid_n * BLOCK_N - offset) // BLOCK_M * BLOCK_M
        for g in range(0, G):
            q_base = Q + b * sqb + hkv * sqh + g * sqg
            do_base = DO + b * sdb + hkv * sdh + g * sdg
            row_base = (pid_bh * G + g) * Tq
            for start_m in range(lo, Tq, BLOCK_M):
                rows = start_m + offs_m
                row_ok = rows < Tq
                q = tl.load(
                    q_base + rows[:, None] * sqt + offs_d[None, :] * sqd, mask=row_ok[:, None], other=0.0
                )
                do = tl.load(
                    do_base + rows[:, None] * sdt + offs_d[None, :] * sdd, mask=row_ok[:, None], other=0.0
                )
                lse = tl.load(L + row_base + rows, mask=row_ok, other=float("inf"))
                delta = tl.load(DELTA + row_base + rows, mask=row_ok, other=0.0)
                s_t = tl.dot(k, tl.trans(q))  # S^T: (BLOCK_N, BLOCK_M)
                valid = col_ok & row_ok[None, :]
                if IS_CAUSAL:
                    valid = valid & (cols[:, None] <= rows[None, :] + offset)
                p_t = tl.where(valid, tl.exp2(s_t * qk_scale - lse[None, :] * 1.4426950408889634), 0.0)
                dv += tl.dot(p_t.to(do.dtype), do)
                dp_t = tl.dot(v, tl.trans(do))  # dP^T = V dO^T
                ds_t = p_t * (dp_t - delta[None, :])
                dk += tl.dot(ds_t.to(q.dtype), q)
        out = pid_bh * Tk * D + cols[:, None] * D + offs_d[None, :]  # DK, DV: contiguous fp32 (B, Hkv, Tk, D)
        tl.store(DK + out, dk * (qk_scale * 0.6931471805599453), mask=col_ok)  # qk_scale * ln 2 = scale
        tl.store(DV + out, dv, mask=col_ok)

    @triton.jit
    def _dq(
        Q, K, V, DO, L, DELTA, DQ,
        sqb, sqh, sqg, sqt, sqd,
        skb, skh, skt, skd,
        svb, svh, svt, svd,
        sdb, sdh, sdg, sdt, sdd,
        H, G, Tq, Tk, offset, qk_scale,
        IS_CAUSAL: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1).to(tl.int64)  # b * H + h; int64 as in _flash_fwd (base offsets past 2**31)
        b = pid_bh // H
        h = pid_bh % H
        hkv = h // G
        g = h % G
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, D)
        row_ok = rows < Tq
        q = tl.load(
            Q + b * sqb + hkv * sqh + g * sqg + rows[:, None] * sqt + offs_d[None, :] * sqd,
            mask=row_ok[:, None], other=0.0,
        )  # fmt: skip
        do = tl.load(
            DO + b * sdb + hkv * sdh + g * sdg + rows[:, None] * sdt + offs_d[None, :] * sdd,
            mask=row_ok[:, None], other=0.0,
        )  # fmt: skip
        lse = tl.load(L + pid_bh * Tq + rows, mask=row_ok, other=float("inf"))
        delta = tl.load(DELTA + pid_bh * Tq + rows, mask=row_ok, other=0.0)
        dq = tl.zeros([BLOCK_M, D], dtype=tl.float32)
        hi = Tk
        if IS_CAUSAL:
            hi = tl.minimum(Tk, tl.maximum(0, (pid_m + 1) * BLOCK_M + offset))
        for start_n in range(0, hi, BLOCK_N):
            cols = start_n + offs_n
            col_ok = cols[:, None] < Tk
            k = tl.load(
                K + b * skb + hkv * skh + cols[:, None] * skt + offs_d[None, :] * skd, mask=col_ok, other=0.0
            )
            v = tl.load(
                V + b * svb + hkv * svh + cols[:, None] * svt + offs_d[None, :] * svd, mask=col_ok, other=0.0
            )
            s = tl.dot(q, tl.trans(k))  # (BLOCK_M, BLOCK_N)
            valid = (cols[None, :] < Tk) & row_ok[:, None]
            if IS_CAUSAL:
                valid = valid & (cols[None, :] <= rows[:, None] + offset)
            p = tl.where(valid, tl.exp2(s * qk_scale - lse[:, None] * 1.4426950408889634), 0.0)
            dp = tl.dot(do, tl.trans(v))
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k)
        out = pid_bh * Tq * D + rows[:, None] * D + offs_d[None, :]  # DQ: contiguous fp32 (B, Hkv, G, Tq, D)
        tl.store(DQ + out, dq * (qk_scale * 0.6931471805599453), mask=row_ok[:, None])

    return _dkdv, _dq


def triton_flash_backward(
    q5: Tensor, k: Tensor, v: Tensor, out5: Tensor, lse: Tensor, d_out5: Tensor, t: Tiling
) -> tuple[Tensor, Tensor, Tensor]:
    """Triton version of ``flash_backward.flash_backward`` (no mask, no dropout); same shapes and dtypes."""
    B, Hkv, G, Tq, D = q5.shape
    Tk = k.shape[2]
    dkdv_kernel, dq_kernel = _build_backward_kernels(_interpreting())
    delta = (d_out5.float() * out5.float()).sum(dim=-1).contiguous()  # (B, Hkv, G, Tq)
    lse = lse.contiguous()
    dq = torch.empty(B, Hkv, G, Tq, D, dtype=torch.float32, device=q5.device)
    dk = torch.empty(B, Hkv, Tk, D, dtype=torch.float32, device=q5.device)
    dv = torch.empty(B, Hkv, Tk, D, dtype=torch.float32, device=q5.device)
    block_m, block_n = (64, 64) if q5.is_cuda else (32, 32)
    num_warps = 8 if D > 64 else 4
    common = dict(IS_CAUSAL=t.offset is not None, D=D, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps)
    strides = (*q5.stride(), *k.stride(), *v.stride(), *d_out5.stride())
    offset, qk_scale = 0 if t.offset is None else t.offset, t.scale * _LOG2E
    dkdv_kernel[(triton_cdiv(Tk, block_n), B * Hkv)](
        q5, k, v, d_out5, lse, delta, dk, dv, *strides, Hkv, G, Tq, Tk, offset, qk_scale, **common
    )
    dq_kernel[(triton_cdiv(Tq, block_m), B * Hkv * G)](
        q5, k, v, d_out5, lse, delta, dq, *strides, Hkv * G, G, Tq, Tk, offset, qk_scale, **common
    )
    return dq.to(q5.dtype), dk.to(k.dtype), dv.to(v.dtype)


def triton_cdiv(a: int, b: int) -> int:
    """ceil(a / b) for positive ints."""
    return -(-a // b)
