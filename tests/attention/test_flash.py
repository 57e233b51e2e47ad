"""flash_attention (tiled online softmax, FA-2 backward) against torch SDPA and the naive reference.

The reference is ``torch.nn.functional.scaled_dot_product_attention`` on dense inputs: K/V expanded
for GQA with ``repeat_interleave`` and the bottom-right causal mask built as a full matrix -- exactly what
flash_attention must avoid -- with gradients from torch.autograd.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from mlcore.attention.flash import Tiling, flash_attention


def dense_mask(
    attn_mask: Tensor | None, *, causal: bool, Tq: int, Tk: int, dtype: torch.dtype
) -> Tensor | None:
    """Additive float mask with -inf where a query may not look: user mask plus bottom-right causal mask."""
    add = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            add = torch.zeros(attn_mask.shape, dtype=dtype).masked_fill(~attn_mask, float("-inf"))
        else:
            add = attn_mask.to(dtype)
    if causal:  # query i sees keys j <= i + Tk - Tq
        allowed = torch.ones(Tq, Tk, dtype=torch.bool).tril(diagonal=Tk - Tq)
        c = torch.zeros(Tq, Tk, dtype=dtype).masked_fill(~allowed, float("-inf"))
        add = c if add is None else add + c
    return add


def torch_reference(q, k, v, *, attn_mask=None, causal=False, scale=None, dtype=torch.float64) -> Tensor:
    """torch SDPA in ``dtype``; a row that sees no key is computed unmasked and multiplied by zero
    (torch gives NaN there), so it contributes nothing to values or gradients."""
    B, H, Tq, _ = q.shape
    Tk = k.shape[2]
    G = H // k.shape[1]
    kk = k.to(dtype).repeat_interleave(G, dim=1)
    vv = v.to(dtype).repeat_interleave(G, dim=1)
    add = dense_mask(attn_mask, causal=causal, Tq=Tq, Tk=Tk, dtype=dtype)
    if add is None:
        return F.scaled_dot_product_attention(q.to(dtype), kk, vv, scale=scale)
    add = add.expand(B, H, Tq, Tk)
    dead = torch.isneginf(add).all(dim=-1, keepdim=True)
    out = F.scaled_dot_product_attention(
        q.to(dtype), kk, vv, attn_mask=add.masked_fill(dead, 0.0), scale=scale
    )
    return out * (~dead).to(dtype)


def qkv(B, H, Hkv, Tq, Tk, D, dtype=torch.float32, requires_grad=True):
    q = torch.randn(B, H, Tq, D, dtype=dtype, requires_grad=requires_grad)
    k = torch.randn(B, Hkv, Tk, D, dtype=dtype, requires_grad=requires_grad)
    v = torch.randn(B, Hkv, Tk, D, dtype=dtype, requires_grad=requires_grad)
    return q, k, v


def grads(out: Tensor, inputs, d_out: Tensor):
    return torch.autograd.grad(out, inputs, d_out.to(out.dtype))


def assert_close_all(a, b, atol, rtol=0.0):
    for x, y, name in zip(a, b, ("out", "dq", "dk", "dv", "dmask")):
        torch.testing.assert_close(
            x.double(), y.double(), atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}"
        )


def run_pair(q, k, v, *, attn_mask=None, causal=False, scale=None, bq=16, bk=16, atol=1e-5):
    out = flash_attention(q, k, v, attn_mask=attn_mask, is_causal=causal, scale=scale, block_q=bq, block_k=bk)
    ref = torch_reference(q, k, v, attn_mask=attn_mask, causal=causal, scale=scale)
    d_out = torch.randn(out.shape, dtype=torch.float64)
    assert torch.isfinite(out).all()
    assert_close_all(
        [out, *grads(out, (q, k, v), d_out)], [ref, *grads(ref, (q, k, v), d_out)], atol=atol, rtol=atol
    )
    return out


@pytest.mark.parametrize(
    "B,H,Hkv,Tq,Tk,D,causal",
    [
        (2, 4, 4, 64, 64, 16, False),  # exact multiple of the block
        (2, 4, 4, 50, 50, 16, True),  # T not a multiple of the block
        (1, 6, 2, 37, 53, 8, True),  # GQA, Tq < Tk: bottom-right causal
        (1, 4, 1, 40, 23, 8, True),  # MQA, Tq > Tk: the first 17 rows see nothing -> zeros
        (2, 2, 1, 1, 45, 8, True),  # one decoding step against a KV cache
        (1, 2, 2, 33, 70, 12, False),
    ],
)
def test_matches_torch_sdpa_fp32(B, H, Hkv, Tq, Tk, D, causal):
    out = run_pair(*qkv(B, H, Hkv, Tq, Tk, D), causal=causal)
    if causal and Tq > Tk:
        assert (out[:, :, : Tq - Tk] == 0).all()


def test_matches_torch_is_causal_when_square():
    """For Tq == Tk torch's own is_causal (top-left) and ours (bottom-right) coincide."""
    q, k, v = qkv(2, 4, 4, 45, 45, 16, requires_grad=False)
    torch.testing.assert_close(
        flash_attention(q, k, v, is_causal=True, block_q=16, block_k=8),
        F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-5, rtol=1e-5,
    )  # fmt: skip


def test_matches_naive_reference_values_and_grads():
    naive = pytest.importorskip("mlcore.attention.naive")
    q, k, v = qkv(2, 6, 3, 29, 41, 8)
    mask = torch.rand(2, 1, 29, 41) > 0.3
    for causal in (False, True):
        out = flash_attention(q, k, v, attn_mask=mask, is_causal=causal, block_q=8, block_k=16)
        ref = naive.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        d_out = torch.randn(out.shape)
        assert_close_all(
            [out, *grads(out, (q, k, v), d_out)], [ref, *grads(ref, (q, k, v), d_out)], atol=1e-5
        )


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 2), Hkv=st.integers(1, 2), G=st.integers(1, 3), Tq=st.integers(1, 40), Tk=st.integers(1, 40),
    D=st.sampled_from([4, 8]), causal=st.booleans(), mask_kind=st.sampled_from(["none", "bool", "float", "pad"]),
    bq=st.sampled_from([4, 16, 64]), bk=st.sampled_from([8, 16]), seed=st.integers(0, 2**16),
)  # fmt: skip
def test_hypothesis_random_shapes(B, Hkv, G, Tq, Tk, D, causal, mask_kind, bq, bk, seed):
    torch.manual_seed(seed)
    H = Hkv * G
    mask = {
        "none": None,
        "bool": torch.rand(B, 1, Tq, Tk) > 0.4,  # some rows may be fully masked
        "float": torch.randn(1, H, Tq, Tk),  # additive bias per head (ALiBi-like)
        "pad": (torch.arange(Tk) < torch.randint(0, Tk + 1, (B, 1, 1, 1))),  # padding mask, possibly empty
    }[mask_kind]
    run_pair(*qkv(B, H, Hkv, Tq, Tk, D), attn_mask=mask, causal=causal, bq=bq, bk=bk, atol=2e-5)


def test_fully_masked_rows_are_zero_with_finite_grads():
    q, k, v = qkv(1, 2, 1, 10, 12, 8)
    mask = torch.ones(1, 1, 10, 12, dtype=torch.bool)
    mask[..., 3, :] = False
    mask[..., 7, :] = False
    out = flash_attention(q, k, v, attn_mask=mask, block_q=4, block_k=4)
    assert (out[:, :, [3, 7]] == 0).all() and torch.isfinite(out).all()
    dq, dk, dv = torch.autograd.grad(out.sum(), (q, k, v))
    assert torch.isfinite(dq).all() and torch.isfinite(dk).all() and torch.isfinite(dv).all()
    assert (dq[:, :, [3, 7]] == 0).all()
    additive = torch.zeros(1, 1, 10, 12).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(out, flash_attention(q, k, v, attn_mask=additive, block_q=4, block_k=4))


@pytest.mark.parametrize("shape", [(2, 4, 23, 31), (1, 4, 23, 31), (1, 1, 1, 31), (23, 31)])
def test_float_mask_gets_the_same_gradient_as_torch(shape):
    """A learnable additive bias (e.g. ALiBi-like) gets dM = dS, summed over the dims it broadcasts along."""
    q, k, v = qkv(2, 4, 2, 23, 31, 8)
    bias = torch.randn(shape, requires_grad=True)
    out = flash_attention(q, k, v, attn_mask=bias, is_causal=True, block_q=8, block_k=16)
    ref = torch_reference(q, k, v, attn_mask=bias, causal=True)
    d_out = torch.randn(out.shape, dtype=torch.float64)
    got = grads(out, (q, k, v, bias), d_out)
    want = grads(ref, (q, k, v, bias), d_out)
    assert_close_all([out, *got], [ref, *want], atol=2e-5, rtol=2e-5)


def test_scale_argument():
    run_pair(*qkv(1, 2, 2, 20, 30, 8), scale=0.37, causal=True)


@pytest.mark.parametrize("causal", [False, True])
def test_bf16_close_to_fp32_reference(causal):
    q, k, v = qkv(1, 4, 2, 70, 70, 32, dtype=torch.bfloat16)
    out = flash_attention(q, k, v, is_causal=causal)
    assert out.dtype == torch.bfloat16
    ref = torch_reference(q, k, v, causal=causal, dtype=torch.float32)
    d_out = torch.randn(out.shape)
    got = [out, *grads(out, (q, k, v), d_out)]
    want = [ref, *grads(ref, (q, k, v), d_out)]
    for x, y in zip(got, want):
        torch.testing.assert_close(x.float(), y.float(), atol=2e-2, rtol=2e-2)
    torch_bf16 = F.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), is_causal=causal
    )
    # ours accumulates in fp32, so it is at least as close to the fp32 truth as torch's bf16 kernel (+ rounding)
    assert (out.float() - ref).abs().max() <= (torch_bf16.float() - ref).abs().max() + 1e-2


# ----------------------------------------------------------------------------------- memory


def saved_bytes(fn) -> tuple[int, list[Tensor]]:
    """Total bytes of the tensors autograd saves for backward while ``fn()`` runs (each storage once)."""
    seen: dict[int, int] = {}
    saved: list[Tensor] = []

    def pack(t: Tensor):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values()), saved


def test_saves_only_linear_memory_for_backward():
    """Saved-for-backward bytes double with T for flash (q, k, v, O, row max m, log l) but quadruple for dense attention."""

    def dense(q, k, v):  # attention the textbook way: autograd keeps the (T, T) probabilities
        return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v

    flash_b, dense_b = [], []
    for T in (128, 256, 512):
        q, k, v = qkv(1, 2, 2, T, T, 16)
        flash_b.append(saved_bytes(lambda q=q, k=k, v=v: flash_attention(q, k, v, is_causal=True))[0])
        dense_b.append(saved_bytes(lambda q=q, k=k, v=v: dense(q, k, v))[0])
        per_row = 2 * (4 * 16 + 2) * 4  # heads * (q, k, v, O rows of D floats + m and log l) * 4 bytes
        assert flash_b[-1] == T * per_row
    assert flash_b[2] / flash_b[0] == pytest.approx(4.0)  # T x4 -> x4 (linear)
    assert dense_b[2] / dense_b[0] > 10.0  # T x4 -> ~x16 (quadratic)


def test_gqa_saves_the_callers_kv_without_copies():
    q, k, v = qkv(1, 8, 2, 40, 40, 16)
    _, saved = saved_bytes(lambda: flash_attention(q, k, v))
    ptrs = {t.untyped_storage().data_ptr() for t in saved}
    assert k.untyped_storage().data_ptr() in ptrs and v.untyped_storage().data_ptr() in ptrs
    assert all(t.numel() <= q.numel() for t in saved)  # nothing of size H * Tk * D (a repeated K/V)


# ---------------------------------------------------------------------------------- dropout


def dense_keep(q, k, *, p, seed, bq, bk, causal) -> Tensor:
    """The (B, H, Tq, Tk) dropout multipliers flash_attention uses, assembled from its per-tile generator."""
    B, H, Tq, _ = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    G = H // Hkv
    t = Tiling(B=B, Hkv=Hkv, G=G, Tq=Tq, Tk=Tk, block_q=bq, block_k=bk, scale=1.0,
               offset=Tk - Tq if causal else None, mask=None, dropout_p=p, seed=seed)  # fmt: skip
    keep = torch.zeros(B, Hkv, G, Tq, Tk)
    for i0, i1 in t.query_blocks():
        for j0, j1 in t.key_blocks_for(i0, i1):
            z = t.dropout_keep(i0, j0, (B, Hkv, G * (i1 - i0), j1 - j0), torch.device("cpu"))
            keep[:, :, :, i0:i1, j0:j1] = z.view(B, Hkv, G, i1 - i0, j1 - j0)
    return keep.reshape(B, H, Tq, Tk)


@pytest.mark.parametrize("causal", [False, True])
def test_dropout_forward_and_backward_match_dense_with_same_mask(causal):
    q, k, v = qkv(2, 4, 2, 37, 45, 8)
    p, bq, bk = 0.3, 16, 8
    torch.manual_seed(123)
    out = flash_attention(q, k, v, is_causal=causal, dropout_p=p, block_q=bq, block_k=bk)
    torch.manual_seed(123)  # flash draws its seed from the global generator: recover it
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    keep = dense_keep(q, k, p=p, seed=seed, bq=bq, bk=bk, causal=causal)
    add = dense_mask(None, causal=causal, Tq=37, Tk=45, dtype=torch.float32)
    scores = q @ k.repeat_interleave(2, 1).transpose(-1, -2) / 8**0.5 + (0 if add is None else add)
    ref = (torch.softmax(scores, dim=-1) * keep) @ v.repeat_interleave(2, 1)
    d_out = torch.randn(out.shape)
    assert_close_all([out, *grads(out, (q, k, v), d_out)], [ref, *grads(ref, (q, k, v), d_out)], atol=1e-5)
    visible = torch.ones(37, 45, dtype=torch.bool) if add is None else torch.isfinite(add)
    frac = (keep[..., visible] == 0).float().mean().item()  # tiles above the diagonal are never drawn
    assert 0.25 < frac < 0.35


def test_dropout_is_seeded_and_unbiased():
    q, k, v = qkv(1, 2, 2, 16, 16, 8, requires_grad=False)
    torch.manual_seed(7)
    a = flash_attention(q, k, v, dropout_p=0.5)
    torch.manual_seed(7)
    b = flash_attention(q, k, v, dropout_p=0.5)
    assert torch.equal(a, b) and not torch.equal(a, flash_attention(q, k, v, dropout_p=0.5))
    gen = torch.Generator().manual_seed(3)
    c = flash_attention(q, k, v, dropout_p=0.5, generator=gen)
    gen.manual_seed(3)
    assert torch.equal(c, flash_attention(q, k, v, dropout_p=0.5, generator=gen))
    mean = torch.stack([flash_attention(q, k, v, dropout_p=0.5) for _ in range(400)]).mean(0)
    torch.testing.assert_close(mean, flash_attention(q, k, v), atol=0.15, rtol=0.0)


# -------------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_value_errors():
    q, k, v = qkv(1, 3, 2, 8, 8, 8, requires_grad=False)
    with pytest.raises(ValueError):  # H % Hkv != 0, reported by _checks
        flash_attention(q, k, v)
    q, k, v = qkv(1, 4, 2, 8, 8, 8, requires_grad=False)
    with pytest.raises(ValueError):
        flash_attention(q, k[..., :4], v)  # D mismatch
    with pytest.raises(ValueError):
        flash_attention(q[0], k, v)  # not 4-D
    with pytest.raises(ValueError, match="block_q"):
        flash_attention(q, k, v, block_q=0)
    with pytest.raises(ValueError, match="dropout_p"):
        flash_attention(q, k, v, dropout_p=1.5)
    with pytest.raises(ValueError, match="use_triton"):
        flash_attention(q, k, v, use_triton=True)  # CPU fp32 D=8: not a Triton case


def test_flash_is_exported():
    attention = importlib.import_module("mlcore.attention")
    if not hasattr(attention, "flash_attention"):
        pytest.skip("mlcore.attention does not export flash_attention yet")
    assert attention.flash_attention is flash_attention
