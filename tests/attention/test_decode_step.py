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
