"""flash_attention at edge values: rows of huge scores, NaN inputs, second derivatives (fifth audit).

The reference for values and gradients is attention written out with ``torch.softmax`` and autograd (what
SDPA's math backend computes). torch's fused CPU SDPA kernel is *not* the reference for the huge-score rows: its
backward recomputes P from the saved log-sum-exp and has the bug fixed here (it gives the same wrong gradients).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mlcore.attention import flash_attention, scaled_dot_product_attention


def written_out(q, k, v, mask, scale=None):
    """softmax(scale * q k^T + mask) v with torch's own softmax: the textbook formula, differentiated by autograd."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.softmax(q @ k.transpose(-1, -2) * scale + mask, dim=-1) @ v


def _qkv(gen, B, H, Tq, Tk, D, dtype=torch.float64):
    return [torch.randn(B, H, T, D, generator=gen, dtype=dtype, requires_grad=True) for T in (Tq, Tk, Tk)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("fill", ["finfo.min", -1e30])
@pytest.mark.parametrize("scale", [None, 3.0])
def test_gradients_of_rows_with_huge_scores(dtype, fill, scale):
    """Regression: a row whose every score is huge (transformers' finfo.min padding-query rows, or any large
    constant) had L = m + log(l) round back to m, so backward recomputed P = 1 for every key instead of 1 / Tk:
    dq, dk, dv of such rows were off by a factor up to Tk. The values were right."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = _qkv(gen, 2, 2, 5, 7, 4, dtype)
    mask = torch.zeros(2, 1, 5, 7, dtype=dtype)
    mask[0, :, 1] = torch.finfo(dtype).min if fill == "finfo.min" else fill  # a padding query: sees every key "masked"
    mask[1, :, 3, :4] = torch.finfo(dtype).min
    d_out = torch.randn(2, 2, 5, 4, generator=gen, dtype=dtype)
    ref = written_out(q, k, v, mask, scale)
    want = [ref, *torch.autograd.grad(ref, (q, k, v), d_out)]
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for bq, bk in ((2, 3), (64, 64)):
        out = flash_attention(q, k, v, attn_mask=mask, scale=scale, block_q=bq, block_k=bk)
        got = [out, *torch.autograd.grad(out, (q, k, v), d_out)]
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=tol, rtol=tol)


def test_nan_inputs_give_nan_like_torch():
    """Regression: a NaN in q, k or a float mask (or scale=inf) came out of flash_attention as a row of zeros,
    hiding it, where torch SDPA and the naive kernel give NaN; a row that sees no key still gives zeros."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = (t.detach().float() for t in _qkv(gen, 1, 2, 4, 6, 8))
    for where in ("q", "k", "mask"):
        qq, kk, mask = q.clone(), k.clone(), torch.zeros(4, 6)
        {"q": qq, "k": kk, "mask": mask}[where][..., 1, 2] = float("nan")
        mask[3] = float("-inf")  # row 3 sees nothing: zeros in mlcore (documented), NaN-free
        ref = scaled_dot_product_attention(qq, kk, v, attn_mask=mask)
        out = flash_attention(qq, kk, v, attn_mask=mask, block_q=2, block_k=4)
        assert torch.equal(out.isnan(), ref.isnan()) and out.isnan().any(), where
        torch.testing.assert_close(out.nan_to_num(7.0), ref.nan_to_num(7.0))
    want = F.scaled_dot_product_attention(q, k, v, scale=float("inf"))
    assert want.isnan().all() and flash_attention(q, k, v, scale=float("inf")).isnan().all()


def test_second_derivatives_refused_by_flash_and_exact_in_naive():
    """Regression: flash's backward was ``once_differentiable``, which with a grad_output that needs no grad
    returns gradients without a graph: a gradient penalty on them was silently a constant (gradgradcheck
    reported a wrong Jacobian). It is refused now; the naive kernel's second derivatives pass gradgradcheck."""
    gen = torch.Generator().manual_seed(2)
    q, k, v = _qkv(gen, 1, 2, 3, 4, 3)
    mask = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    out = flash_attention(q, k, v, attn_mask=mask, is_causal=True, block_q=2, block_k=2)
    with pytest.raises(RuntimeError, match="second derivative"):
        torch.autograd.grad(out.sum(), q, create_graph=True)
    plain = torch.autograd.grad(flash_attention(q, k, v, attn_mask=mask).sum(), (q, k, v, mask))  # first order: fine
    assert all(torch.isfinite(g).all() for g in plain)

    def naive(q, k, v, mask):
        return scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True)

    assert torch.autograd.gradcheck(naive, (q, k, v, mask))
    assert torch.autograd.gradgradcheck(naive, (q, k, v, mask))
