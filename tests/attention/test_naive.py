"""mlcore's written-out SDPA against torch.nn.functional.scaled_dot_product_attention (the reference)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mlcore.attention import scaled_dot_product_attention as sdpa

MASK_KINDS = ("none", "bool", "additive")


def _shapes(draw):
    B = draw(st.integers(1, 2))
    Hkv = draw(st.integers(1, 3))
    G = draw(st.integers(1, 3))
    Tq = draw(st.integers(1, 6))
    Tk = draw(st.integers(1, 7))
    D = draw(st.integers(1, 8))
    Dv = draw(st.sampled_from([D, D + 3]))
    return B, Hkv * G, Hkv, Tq, Tk, D, Dv


def _mask(kind: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor | None:
    if kind == "none":
        return None
    if kind == "bool":
        return torch.rand(shape, generator=gen) > 0.3
    m = torch.randn(shape, generator=gen)
    return m.masked_fill(torch.rand(shape, generator=gen) < 0.3, float("-inf"))


def _reference(q, k, v, attn_mask, is_causal, scale=None):
    """torch SDPA with the causal part spelled out bottom-right (torch's is_causal is top-left when Tq != Tk).

    Returns (out, row_sees_something (B, H, Tq, 1)).
    """
    B, H, Tq, _ = q.shape
    Tk = k.shape[2]
    add = torch.zeros(B, H, Tq, Tk, dtype=torch.float32)
    if attn_mask is not None:
        add = add + (
            torch.zeros(attn_mask.shape).masked_fill(~attn_mask, float("-inf"))
            if attn_mask.dtype == torch.bool
            else attn_mask
        )
    if is_causal:
        add = add + torch.zeros(Tq, Tk).masked_fill(
            ~torch.ones(Tq, Tk, dtype=torch.bool).tril(Tk - Tq), float("-inf")
        )
    sees = (add > float("-inf")).any(dim=-1, keepdim=True)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=add.to(q.dtype), scale=scale, enable_gqa=k.shape[1] != H
    )
    return out, sees


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(), kind=st.sampled_from(MASK_KINDS), is_causal=st.booleans(), mask_bcast=st.integers(0, 3)
)
def test_matches_torch_sdpa_fp32(data, kind, is_causal, mask_bcast):
    B, H, Hkv, Tq, Tk, D, Dv = _shapes(data.draw)
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    q = torch.randn(B, H, Tq, D, generator=gen)
    k = torch.randn(B, Hkv, Tk, D, generator=gen)
    v = torch.randn(B, Hkv, Tk, Dv, generator=gen)
    mask_shape = [(B, H, Tq, Tk), (B, 1, 1, Tk), (Tq, Tk), (1, H, Tq, 1)][mask_bcast]
    mask = _mask(kind, mask_shape, gen)
    ref, sees = _reference(q, k, v, mask, is_causal)
    out = sdpa(q, k, v, attn_mask=mask, is_causal=is_causal)
    assert out.shape == (B, H, Tq, Dv)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(torch.where(sees, out, 0.0), torch.where(sees, ref, 0.0), atol=1e-5, rtol=1e-5)
    assert (out[~sees.expand_as(out)] == 0).all()  # rows that see nothing are zeros


@settings(max_examples=25, deadline=None)
@given(data=st.data(), is_causal=st.booleans())
def test_matches_torch_sdpa_bf16(data, is_causal):
    B, H, Hkv, Tq, Tk, D, Dv = _shapes(data.draw)
    Tk = max(Tk, Tq)  # every row sees a key
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    q, k, v = (
        torch.randn(s, generator=gen).bfloat16() for s in ((B, H, Tq, D), (B, Hkv, Tk, D), (B, Hkv, Tk, Dv))
    )
    ref, _ = _reference(q, k, v, None, is_causal)
    out = sdpa(q, k, v, is_causal=is_causal)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), atol=1e-2, rtol=1e-2)


def test_gqa_equals_repeated_kv_and_custom_scale():
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 6, 5, 8, generator=gen)
    k = torch.randn(2, 2, 9, 8, generator=gen)
    v = torch.randn(2, 2, 9, 8, generator=gen)
    ref = F.scaled_dot_product_attention(
        q, k.repeat_interleave(3, dim=1), v.repeat_interleave(3, dim=1), scale=0.3
    )
    torch.testing.assert_close(sdpa(q, k, v, scale=0.3), ref, atol=1e-5, rtol=1e-5)
    # MQA: one key/value head for all queries
    torch.testing.assert_close(
        sdpa(q, k[:, :1], v[:, :1]),
        F.scaled_dot_product_attention(q, k[:, :1].expand(2, 6, 9, 8), v[:, :1].expand(2, 6, 9, 8)),
        atol=1e-5,
        rtol=1e-5,
    )


def test_causal_square_equals_torch_is_causal():
    q, k, v = (torch.randn(2, 4, 7, 16) for _ in range(3))
    torch.testing.assert_close(
        sdpa(q, k, v, is_causal=True),
        F.scaled_dot_product_attention(q, k, v, is_causal=True),
        atol=1e-5,
        rtol=1e-5,
    )


@settings(max_examples=25, deadline=None)
@given(data=st.data(), kind=st.sampled_from(MASK_KINDS), is_causal=st.booleans())
def test_gradients_match_torch(data, kind, is_causal):
    B, H, Hkv, Tq, Tk, D, Dv = _shapes(data.draw)
    Tk = max(Tk, Tq)
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    base = [
        torch.randn(s, generator=gen, dtype=torch.float64)
        for s in ((B, H, Tq, D), (B, Hkv, Tk, D), (B, Hkv, Tk, Dv))
    ]
    mask = _mask(kind, (B, 1, Tq, Tk), gen)
    if (
        mask is not None
    ):  # keep the diagonal visible so no row is empty (torch's NaN/0 choice is not the point here)
        diag = torch.ones(Tq, Tk, dtype=torch.bool).tril(Tk - Tq) & ~torch.ones(
            Tq, Tk, dtype=torch.bool
        ).tril(Tk - Tq - 1)
        mask = (mask | diag) if mask.dtype == torch.bool else mask.masked_fill(diag, 0.0).double()
    grad_out = torch.randn(B, H, Tq, Dv, generator=gen, dtype=torch.float64)
    ours = [t.clone().requires_grad_() for t in base]
    theirs = [t.clone().requires_grad_() for t in base]
    (sdpa(*ours, attn_mask=mask, is_causal=is_causal) * grad_out).sum().backward()
    ref, _ = _reference(*theirs, mask, is_causal)
    (ref * grad_out).sum().backward()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-8, rtol=1e-6)


def test_weights_rows_sum_to_one_and_match_softmax():
    q, k, v = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    out, w = sdpa(q, k, v, is_causal=True, return_weights=True)
    assert w.shape == (1, 2, 4, 6)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 2, 4))
    assert (w.triu(6 - 4 + 1) == 0).all()  # bottom-right causal: query i sees keys <= i + 2
    ref = torch.softmax(
        (q @ k.transpose(-1, -2) / 8**0.5).masked_fill(
            ~torch.ones(4, 6, dtype=torch.bool).tril(2), float("-inf")
        ),
        dim=-1,
    )
    torch.testing.assert_close(w, ref)
    torch.testing.assert_close(out, w @ v)


def test_fully_masked_rows_are_zero_with_finite_gradients():
    q = torch.randn(1, 2, 3, 4, requires_grad=True)
    k = torch.randn(1, 2, 5, 4, requires_grad=True)
    v = torch.randn(1, 2, 5, 4, requires_grad=True)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False
    out, w = sdpa(q, k, v, attn_mask=mask, return_weights=True)
    assert (out[:, :, 1] == 0).all() and (w[:, :, 1] == 0).all()
    torch.testing.assert_close(w[:, :, [0, 2]].sum(-1), torch.ones(1, 2, 2))
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[:, :, 1] == 0).all()
    # is_causal with Tq > Tk: the first Tq - Tk queries see nothing
    out = sdpa(torch.randn(1, 1, 5, 4), torch.randn(1, 1, 2, 4), torch.randn(1, 1, 2, 4), is_causal=True)
    assert (out[0, 0, :3] == 0).all() and (out[0, 0, 3:] != 0).any()
    # no keys at all (an empty cache): zeros too
    assert (sdpa(torch.randn(1, 2, 3, 4), torch.randn(1, 1, 0, 4), torch.randn(1, 1, 0, 4)) == 0).all()


def test_dropout_training_semantics():
    q, k, v = torch.randn(2, 2, 16, 8), torch.randn(2, 2, 16, 8), torch.randn(2, 2, 16, 8)
    _, w = sdpa(q, k, v, return_weights=True)
    p = 0.25
    out1, wd = sdpa(q, k, v, dropout_p=p, return_weights=True, generator=torch.Generator().manual_seed(3))
    out2 = sdpa(q, k, v, dropout_p=p, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out1, out2)  # reproducible from the generator
    torch.testing.assert_close(out1, wd @ v)
    kept = wd != 0
    torch.testing.assert_close(wd[kept], (w / (1 - p))[kept])  # kept weights rescaled by 1/(1-p)
    assert 0.15 < 1 - kept.float().mean().item() < 0.35
    # Same law as torch's dropout: E[out] is the dropout-free output.
    outs = torch.stack(
        [sdpa(q, k, v, dropout_p=p, generator=torch.Generator().manual_seed(s)) for s in range(200)]
    )
    torch.testing.assert_close(outs.mean(0), sdpa(q, k, v), atol=0.15, rtol=0)


def _qkv(**over):
    t = {"q": torch.randn(1, 4, 3, 8), "k": torch.randn(1, 2, 5, 8), "v": torch.randn(1, 2, 5, 8)}
    t.update(over)
    return t["q"], t["k"], t["v"]


@pytest.mark.parametrize(
    ("over", "name"),
    [
        ({"k": torch.randn(1, 2, 5, 7)}, "k head dim"),
        ({"k": torch.randn(1, 3, 5, 8), "v": torch.randn(1, 3, 5, 8)}, "k has 3 heads"),
        ({"v": torch.randn(1, 2, 6, 8)}, "v length"),
        ({"v": torch.randn(2, 2, 5, 8)}, "v batch"),
        ({"q": torch.randn(4, 3, 8)}, "q must be 4-D"),
        ({"q": torch.randint(0, 3, (1, 4, 3, 8))}, "q must have a floating dtype"),
        ({"k": torch.randn(1, 2, 5, 8, dtype=torch.float64)}, "k dtype"),
        ({"v": torch.randn(1, 2, 5, 8, device="meta")}, "v is on device meta"),
    ],
)
def test_bad_qkv_raise_value_error_naming_argument(over, name):
    with pytest.raises(ValueError, match=name):
        sdpa(*_qkv(**over))


@pytest.mark.parametrize(
    ("mask", "match"),
    [
        (torch.ones(3, 4, dtype=torch.bool), "not broadcastable"),
        (torch.ones(2, 4, 3, 5, dtype=torch.bool), "not broadcastable"),
        (torch.ones(1, 1, 1, 3, 5, dtype=torch.bool), "not broadcastable"),
        (torch.ones(3, 5, dtype=torch.int64), "bool .* or floating"),
        (torch.ones(3, 5, dtype=torch.bool, device="meta"), "attn_mask is on device meta"),
    ],
)
def test_bad_mask_raises(mask, match):
    with pytest.raises(ValueError, match=match):
        sdpa(*_qkv(), attn_mask=mask)


def test_bad_dropout_raises():
    with pytest.raises(ValueError, match="dropout_p"):
        sdpa(*_qkv(), dropout_p=1.0)


def test_empty_head_dim_matches_torch():
    """Regression: D = 0 raised ZeroDivisionError computing the default scale; torch averages v (all scores 0)."""
    q, k, v = torch.randn(1, 4, 3, 0), torch.randn(1, 2, 5, 0), torch.randn(1, 2, 5, 6)
    ref = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    torch.testing.assert_close(sdpa(q, k, v), ref)


@pytest.mark.parametrize("kw", [dict(dropout_p=None), dict(dropout_p="0.1"), dict(dropout_p=True),
                                dict(scale="x"), dict(scale=torch.ones(2))])
def test_dropout_and_scale_of_the_wrong_type_are_named(kw: dict) -> None:
    from mlcore.attention import flash_attention

    q = torch.randn(1, 2, 3, 4)
    for fn in (sdpa, flash_attention):
        with pytest.raises(ValueError, match=next(iter(kw))):
            fn(q, q, q, **kw)
