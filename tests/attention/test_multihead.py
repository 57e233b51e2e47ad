"""MultiHeadAttention against torch's twins: F.scaled_dot_product_attention, nn.MultiheadAttention, BLOOM's ALiBi."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mlcore.attention import MultiHeadAttention
from mlcore.inference import DynamicCache
from mlcore.positional import RotaryEmbedding


def _left_pad_mask(B: int, T: int) -> torch.Tensor:
    am = torch.ones(B, T, dtype=torch.long)
    am[-1, :2] = 0
    return am


def test_matches_torch_nn_multihead_attention():
    """Encoder-style (causal=False), full heads, biases, padding: the same as torch's nn.MultiheadAttention."""
    C, H, T = 32, 4, 6
    ref = nn.MultiheadAttention(C, H, bias=True, batch_first=True).eval()
    ours = MultiHeadAttention(C, H, qkv_bias=True, out_bias=True, causal=False).eval()
    wq, wk, wv = ref.in_proj_weight.chunk(3)
    bq, bk, bv = ref.in_proj_bias.chunk(3)
    with torch.no_grad():
        for lin, w, b in ((ours.q_proj, wq, bq), (ours.k_proj, wk, bk), (ours.v_proj, wv, bv),
                          (ours.o_proj, ref.out_proj.weight, ref.out_proj.bias)):
            lin.weight.copy_(w)
            lin.bias.copy_(b)
    x = torch.randn(2, T, C)
    am = torch.ones(2, T, dtype=torch.long)
    am[1, 4:] = 0
    out_ref, w_ref = ref(x, x, x, key_padding_mask=am == 0, need_weights=True, average_attn_weights=False)
    out, w = ours(x, attention_mask=am, return_weights=True)
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w, w_ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", ["flash", "torch"])
@pytest.mark.parametrize(
    "kw",
    [
        {"n_kv_heads": 2},
        {"n_kv_heads": 1, "fused_qkv": True, "qkv_bias": True},
        {"n_kv_heads": 2, "sliding_window": 3},
        {"n_kv_heads": 4, "causal": False},
        {"n_kv_heads": 2, "rope": "rope"},
        {"n_kv_heads": 2, "alibi": True},
    ],
)
def test_backends_agree(kw, backend):
    """mlcore's naive path, mlcore's flash path and torch's SDPA give one answer, padded batches included."""
    kw = dict(kw)
    if kw.get("rope") == "rope":
        kw["rope"] = RotaryEmbedding(8)
    torch.manual_seed(0)
    naive = MultiHeadAttention(32, 4, head_dim=8, **kw).eval()
    other = MultiHeadAttention(32, 4, head_dim=8, backend=backend, **kw).eval()
    other.load_state_dict(naive.state_dict())
    x = torch.randn(3, 7, 32)
    am = _left_pad_mask(3, 7)
    torch.testing.assert_close(other(x, attention_mask=am), naive(x, attention_mask=am), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(other(x), naive(x), atol=2e-5, rtol=1e-5)


def test_torch_twin_with_explicit_reference():
    """GQA + padding + causal, checked step by step with F.scaled_dot_product_attention(enable_gqa=True)."""
    torch.manual_seed(1)
    m = MultiHeadAttention(24, 6, n_kv_heads=3, qkv_bias=True).eval()
    x = torch.randn(2, 5, 24)
    am = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    q = m.q_proj(x).view(2, 5, 6, 4).transpose(1, 2)
    k = m.k_proj(x).view(2, 5, 3, 4).transpose(1, 2)
    v = m.v_proj(x).view(2, 5, 3, 4).transpose(1, 2)
    mask = torch.ones(5, 5, dtype=torch.bool).tril() & am.bool()[:, None, None, :]
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    ref = m.o_proj(ref.transpose(1, 2).reshape(2, 5, 24))
    torch.testing.assert_close(m(x, attention_mask=am), ref, atol=1e-5, rtol=1e-5)


def test_alibi_matches_bloom():
    """ALiBi bias slope_h * (j - i) equals transformers' BLOOM ``build_alibi_tensor`` (slope_h * pos_j) per row."""
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    torch.manual_seed(2)
    H, D, T = 6, 4, 7
    m = MultiHeadAttention(H * D, H, alibi=True).eval()
    x = torch.randn(2, T, H * D)
    am = _left_pad_mask(2, T)
    alibi = build_alibi_tensor(am, H, torch.float32).view(2, H, 1, T)
    q = m.q_proj(x).view(2, T, H, D).transpose(1, 2)
    k = m.k_proj(x).view(2, T, H, D).transpose(1, 2)
    v = m.v_proj(x).view(2, T, H, D).transpose(1, 2)
    visible = torch.ones(T, T, dtype=torch.bool).tril() & am.bool()[:, None, None, :]
    bias = alibi.masked_fill(~visible, float("-inf"))
    ref = m.o_proj(F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(2, T, H * D))
    ours = m(x, attention_mask=am)
    real = am.bool()  # pad query rows see nothing in one convention and something in the other
    torch.testing.assert_close(ours[real], ref[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["naive", "flash", "torch"])
def test_kv_cache_decoding_equals_full_forward(backend):
    """Prefill 4 tokens, then decode 1 at a time: bottom-right causal alignment and RoPE positions after the cache."""
    torch.manual_seed(3)
    m = MultiHeadAttention(32, 4, n_kv_heads=2, rope=RotaryEmbedding(8), backend=backend).eval()
    x = torch.randn(2, 7, 32)
    full = m(x)
    cache = DynamicCache()
    parts = [m(x[:, :4], cache=cache, layer_idx=3)]
    for t in range(4, 7):
        parts.append(m(x[:, t : t + 1], cache=cache, layer_idx=3))
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.get_seq_length(3) == 7


def test_sliding_window_limits_the_view():
    """With window w, changing a token more than w - 1 positions back leaves later outputs unchanged."""
    torch.manual_seed(4)
    m = MultiHeadAttention(16, 2, sliding_window=3).eval()
    x = torch.randn(1, 8, 16)
    y = x.clone()
    y[0, 0] += 5.0
    a, b = m(x), m(y)
    torch.testing.assert_close(a[:, 3:], b[:, 3:])
    assert not torch.allclose(a[:, 2], b[:, 2])


def test_dropout_only_in_training():
    m = MultiHeadAttention(16, 2, dropout=0.5, causal=False)
    x = torch.randn(1, 6, 16)
    torch.manual_seed(0)
    a = m(x)
    b = m(x)
    assert not torch.allclose(a, b)
    m.eval()
    torch.testing.assert_close(m(x), m(x))


def test_full_bool_and_additive_masks_accepted():
    torch.manual_seed(5)
    m = MultiHeadAttention(16, 2, causal=False).eval()
    x = torch.randn(2, 5, 16)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    additive = torch.zeros(1, 1, 5, 5).masked_fill(~causal, float("-inf"))
    ref = MultiHeadAttention(16, 2, causal=True).eval()
    ref.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(x, attention_mask=causal), ref(x))
    torch.testing.assert_close(m(x, attention_mask=additive), ref(x))


def test_state_dict_names_are_llama_style():
    assert set(MultiHeadAttention(16, 4, n_kv_heads=2).state_dict()) == {
        "q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"}
    assert set(MultiHeadAttention(16, 4, fused_qkv=True, qkv_bias=True, out_bias=True).state_dict()) == {
        "qkv_proj.weight", "qkv_proj.bias", "o_proj.weight", "o_proj.bias"}
    m = MultiHeadAttention(16, 4, n_kv_heads=2, rope=RotaryEmbedding(4))
    assert "rope.inv_freq" not in m.state_dict()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"n_kv_heads": 3}, "n_kv_heads"),
        ({"backend": "cuda"}, "backend"),
        ({"dropout": 1.5}, "dropout"),
        ({"sliding_window": 0}, "sliding_window"),
        ({"sliding_window": 2, "causal": False}, "sliding_window"),
    ],
)
def test_bad_constructor_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        MultiHeadAttention(16, 4, **kw)
    with pytest.raises(ValueError, match="head_dim"):
        MultiHeadAttention(18, 4)


def test_bad_forward_arguments():
    m = MultiHeadAttention(16, 4, n_kv_heads=2)
    x = torch.randn(2, 5, 16)
    with pytest.raises(ValueError, match="x must be"):
        m(torch.randn(2, 5, 12))
    with pytest.raises(ValueError, match="attention_mask"):
        m(x, attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="attention_mask"):
        m(x, attention_mask=torch.ones(2, 3, 5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="attention_mask"):
        m(x, attention_mask=torch.ones(5, 5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="return_weights"):
        MultiHeadAttention(16, 4, backend="flash")(x, return_weights=True)
    with pytest.raises(ValueError, match="position_ids"):
        MultiHeadAttention(16, 4, rope=RotaryEmbedding(4))(x, position_ids=torch.arange(4)[None])


@settings(max_examples=25, deadline=None)
@given(
    Hkv=st.integers(1, 3), G=st.integers(1, 3), D=st.sampled_from([2, 4, 6]), T=st.integers(1, 7),
    prefill=st.integers(0, 6), window=st.one_of(st.none(), st.integers(1, 4)), causal=st.booleans(),
    pad=st.integers(0, 3), seed=st.integers(0, 2**31),
)
def test_random_configs_match_torch_twin(Hkv, G, D, T, prefill, window, causal, pad, seed):
    """Random GQA shapes, left padding, sliding window, and a cache split (prefill, then the rest):
    mlcore's naive and flash paths equal the torch-SDPA twin on every token that sees a key."""
    causal = causal or window is not None
    prefill = min(prefill, T - 1)
    torch.manual_seed(seed)
    H = Hkv * G
    kw = dict(n_kv_heads=Hkv, head_dim=D, sliding_window=window, causal=causal, rope=RotaryEmbedding(D))
    models = {b: MultiHeadAttention(8, H, backend=b, **kw).eval() for b in ("naive", "flash", "torch")}
    for m in models.values():
        m.load_state_dict(models["naive"].state_dict())
    x = torch.randn(2, T, 8)
    am = torch.ones(2, T, dtype=torch.long)
    am[1, : min(pad, T - 1)] = 0
    outs = {}
    for name, m in models.items():
        if prefill:
            cache = DynamicCache()
            a = m(x[:, :prefill], attention_mask=am[:, :prefill], cache=cache)
            b = m(x[:, prefill:], attention_mask=am, cache=cache)
            outs[name] = torch.cat([a, b], dim=1)
        else:
            outs[name] = m(x, attention_mask=am)
    for name in ("naive", "flash"):
        torch.testing.assert_close(outs[name], outs["torch"], atol=2e-5, rtol=1e-5)


def test_bool_sizes_and_a_rope_wider_than_a_head_are_refused():
    from mlcore.positional import RotaryEmbedding, alibi_bias

    for kw in (dict(n_heads=True), dict(n_heads=4, head_dim=True), dict(n_heads=4, sliding_window=True),
               dict(n_heads=4, dropout="0.1")):
        with pytest.raises(ValueError, match=next(k for k in kw if k != "n_heads" or len(kw) == 1)):
            MultiHeadAttention(16, **kw)
    with pytest.raises(ValueError, match="rope rotates 8 dims"):
        MultiHeadAttention(16, 4, rope=RotaryEmbedding(8))
    with pytest.raises(ValueError, match="dtype"):
        alibi_bias(2, 3, 3, dtype=torch.int64)  # the fractional slopes would truncate to 0


def test_bool_kv_heads_and_a_rope_that_is_no_module_are_refused() -> None:
    from mlcore.attention import MultiHeadAttention

    with pytest.raises(ValueError, match="n_kv_heads"):
        MultiHeadAttention(16, 2, n_kv_heads=True)
    with pytest.raises(ValueError, match="rope must be"):
        MultiHeadAttention(16, 2, rope="rope")
