"""A decode step (one real query per row, with a KV cache) goes through torch's fused SDPA in float32; its output
must equal the attention written out against torch's reference, for GQA, ALiBi, a sliding window and bf16."""

from __future__ import annotations

import pytest
import torch

from mlcore.attention import MultiHeadAttention
from mlcore.inference import DynamicCache, StaticCache
from mlcore.positional import RotaryEmbedding


def _reference(m: MultiHeadAttention, x: torch.Tensor) -> torch.Tensor:
    """Every position of x (B, T, C) at once, no cache, in float64 through torch SDPA with an explicit mask."""
    m64 = MultiHeadAttention(m.d_model, m.n_heads, n_kv_heads=m.n_kv_heads, rope=m.rope, alibi=m.alibi,
                             sliding_window=m.sliding_window, backend="torch").double().eval()
    m64.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
    return m64(x.double())


@pytest.mark.parametrize("kw", [dict(n_kv_heads=2, rope=True), dict(n_kv_heads=1, alibi=True),
                                dict(n_kv_heads=4, rope=True, sliding_window=3)], ids=["gqa-rope", "mqa-alibi", "window"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cache_kind", ["dynamic", "static"])
def test_decode_steps_equal_the_full_forward(kw: dict, dtype: torch.dtype, cache_kind: str) -> None:
    torch.manual_seed(5)
    rope = RotaryEmbedding(8) if kw.pop("rope", False) else None
    m = MultiHeadAttention(32, 4, rope=rope, **kw).eval()
    x = torch.randn(2, 9, 32)
    ref = _reference(m, x)
    m = m.to(dtype)
    cache = DynamicCache() if cache_kind == "dynamic" else StaticCache(9)
    with torch.no_grad():
        parts = [m(x[:, :4].to(dtype), cache=cache)]
        parts += [m(x[:, t: t + 1].to(dtype), cache=cache) for t in range(4, 9)]  # the fused decode steps
    out = torch.cat(parts, dim=1).double()
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)


def test_a_padding_query_in_a_step_still_gives_zeros() -> None:
    """With a padding mask the step keeps the written-out kernel: a query that sees no key yields 0, not NaN."""
    torch.manual_seed(6)
    m = MultiHeadAttention(16, 2, rope=RotaryEmbedding(8), out_bias=True).eval()
    cache = DynamicCache()
    with torch.no_grad():
        m(torch.randn(1, 3, 16), attention_mask=torch.zeros(1, 3, dtype=torch.long), cache=cache)
        out = m(torch.randn(1, 1, 16), attention_mask=torch.zeros(1, 4, dtype=torch.long), cache=cache)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, m.o_proj.bias.expand_as(out))  # attention output 0, then the bias only


@pytest.mark.parametrize("H,Hkv", [(4, 4), (8, 2), (6, 1)], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("mask_shape", [None, "shared", "per-row", "per-head"])
def test_single_query_attention_matches_torch_sdpa(H: int, Hkv: int, mask_shape: str | None) -> None:
    """The compiled CPU step's attention (two batched matmuls) against torch's SDPA, GQA expanded by torch."""
    from mlcore.attention.naive import single_query_attention

    g = torch.Generator().manual_seed(7)
    B, Tk, D, Dv = 3, 11, 16, 12
    q, k, v = (torch.randn(B, H, 1, D, generator=g), torch.randn(B, Hkv, Tk, D, generator=g),
               torch.randn(B, Hkv, Tk, Dv, generator=g))
    shape = {None: None, "shared": (1, 1, 1, Tk), "per-row": (B, 1, 1, Tk), "per-head": (B, H, 1, Tk)}[mask_shape]
    mask = None
    if shape is not None:  # additive: random biases (ALiBi-like) with some keys hidden, never a row's last key
        mask = torch.randn(shape, generator=g)
        mask[..., :-1] = mask[..., :-1].masked_fill(torch.rand(shape[:-1] + (Tk - 1,), generator=g) < 0.3,
                                                    float("-inf"))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=H != Hkv)
    torch.testing.assert_close(single_query_attention(q, k, v, mask), ref, atol=1e-6, rtol=1e-5)

