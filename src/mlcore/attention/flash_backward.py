"""FlashAttention-2 backward pass in plain PyTorch: recompute P tile by tile from the saved row statistics.

Reference: T. Dao, "FlashAttention-2" (2023), Algorithm 2. With O = P V, P = softmax(S),
S = scale * Q K^T + M, the saved row max m and log l (log-sum-exp past the max; FA-2 saves L = m + log l,
which rounds to m when the row's scores are huge, see ``flash.py``)::

    P_ij  = exp((S_ij - m_i) - log l_i)           (recomputed; never stored whole)
    D_i   = rowsum(dO_i * O_i)                    (= rowsum(P_i * dP_i), one number per query row)
    dV_j += P_ij^T dO_i
    dP_ij = dO_i V_j^T
    dS_ij = P_ij * (dP_ij - D_i)                  (softmax Jacobian, applied row-wise)
    dQ_i += scale * dS_ij K_j
    dK_j += scale * dS_ij^T Q_i

With dropout (multiplier Z / (1 - p) per tile, regenerated from the seed), P in dV is replaced by the
dropped P and dP is multiplied by the same multiplier; D_i = rowsum(dO_i * O_i) still holds.

Work partitioning as in FA-2: the outer loop runs over key blocks, so dK_j and dV_j accumulate in
one place; the inner loop over the query blocks that see them adds into dQ. For GQA the G query heads of
a group are rows of one matrix, so dK and dV sum over the group by the matrix product itself.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .flash import Tiling, query_tile

__all__ = ["flash_backward"]


def flash_backward(
    q5: Tensor,
    k: Tensor,
    v: Tensor,
    out5: Tensor,
    row_max: Tensor,
    row_log_l: Tensor,
    d_out5: Tensor,
    t: Tiling,
    *,
    mask_grad: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Gradients of flash attention.

    q5: (B, Hkv, G, Tq, D); k: (B, Hkv, Tk, D); v: (B, Hkv, Tk, Dv); out5, d_out5: (B, Hkv, G, Tq, Dv);
    row_max, row_log_l: (B, Hkv, G, Tq) in ``t.acc_dtype``, from ``flash_forward``. Returns dq5 (B, Hkv, G, Tq, D), dk (B, Hkv, Tk, D), dv (B, Hkv, Tk, Dv)
    and, if ``mask_grad``, the gradient of the additive mask ``t.mask`` (dM = dS, summed over the dims
    the mask broadcasts along; else None), each in its input's dtype (accumulated in ``t.acc_dtype``, fp32 or fp64).
    """
    B, Hkv, G, Tq, D = q5.shape
    acc, dev = t.acc_dtype, q5.device
    delta = (d_out5.to(acc) * out5.to(acc)).sum(dim=-1)  # D_i: (B, Hkv, G, Tq)
    dq = torch.zeros(B, Hkv, G, Tq, D, dtype=acc, device=dev)
    dk = torch.zeros(k.shape, dtype=acc, device=dev)
    dv = torch.zeros(v.shape, dtype=acc, device=dev)
    dmask = torch.zeros(t.mask.shape, dtype=acc, device=dev) if mask_grad and t.mask is not None else None
    for j0 in range(0, t.Tk, t.block_k):
        j1 = min(j0 + t.block_k, t.Tk)
        kb = k[:, :, j0:j1].to(acc)  # (B, Hkv, bk, D)
        vb = v[:, :, j0:j1].to(acc)  # (B, Hkv, bk, Dv)
        dk_acc = torch.zeros_like(kb)
        dv_acc = torch.zeros_like(vb)
        for i0, i1 in t.query_blocks_for(j0, j1):
            bq = i1 - i0
            qb = query_tile(q5, i0, i1, acc)  # (B, Hkv, G*bq, D)
            dob = query_tile(d_out5, i0, i1, acc)  # (B, Hkv, G*bq, Dv)
            mb = row_max[:, :, :, i0:i1].reshape(B, Hkv, G * bq, 1)
            lb = row_log_l[:, :, :, i0:i1].reshape(B, Hkv, G * bq, 1)
            db = delta[:, :, :, i0:i1].reshape(B, Hkv, G * bq, 1)
            p = torch.exp((t.scores(qb, kb, i0, i1, j0, j1) - mb) - lb)  # (B, Hkv, G*bq, bk)
            dp = torch.matmul(dob, vb.transpose(-1, -2))  # dP = dO V^T
            if t.dropout_p > 0.0:
                keep = t.dropout_keep(i0, j0, tuple(p.shape), dev)
                dv_acc += torch.matmul((p * keep).transpose(-1, -2), dob)
                dp = dp * keep
            else:
                dv_acc += torch.matmul(p.transpose(-1, -2), dob)
            ds = p * (dp - db)  # dS = P * (dP - D)
            dq[:, :, :, i0:i1] += (torch.matmul(ds, kb) * t.scale).view(B, Hkv, G, bq, D)
            dk_acc += torch.matmul(ds.transpose(-1, -2), qb) * t.scale
            if dmask is not None:
                _add_mask_grad(dmask, ds.view(B, Hkv * G, bq, j1 - j0), i0, i1, j0, j1)
        dk[:, :, j0:j1] = dk_acc
        dv[:, :, j0:j1] = dv_acc
    dmask = None if dmask is None else dmask.to(t.mask.dtype)
    return dq.to(q5.dtype), dk.to(k.dtype), dv.to(v.dtype), dmask


def _add_mask_grad(dmask: Tensor, ds: Tensor, i0: int, i1: int, j0: int, j1: int) -> None:
    """dM += dS of one tile; ds: (B, H, bq, bk), summed over every dim where the mask has size 1."""
    dims = [d for d in range(4) if dmask.shape[d] == 1]
    g = ds.sum(dim=dims, keepdim=True) if dims else ds
    rows = slice(i0, i1) if dmask.shape[2] > 1 else slice(None)
    cols = slice(j0, j1) if dmask.shape[3] > 1 else slice(None)
    dmask[:, :, rows, cols] += g
