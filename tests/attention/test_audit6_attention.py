"""Sixth-round differential audit of ``mlcore.attention`` against torch 2.13's SDPA and transformers' references:
half precision against SDPA's CPU backends, decode shapes (Tq = 1 over long cached keys, broadcast masks, rows
that see nothing), and ``MultiHeadAttention`` stepping through every ``mlcore.inference`` cache kind."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from mlcore.attention import MultiHeadAttention, flash_attention, scaled_dot_product_attention
from mlcore.inference import DynamicCache, PagedCache, StaticCache
from mlcore.inference.quantized_cache import QuantizedCache
from mlcore.inference.sliding_cache import SlidingWindowCache
from mlcore.positional import RotaryEmbedding

os.environ.setdefault("HF_HUB_OFFLINE", "1")
KERNELS = [scaled_dot_product_attention, flash_attention]


def _qkv(B=1, H=2, Hkv=2, Tq=3, Tk=5, D=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, Tq, D, generator=g).to(dtype), torch.randn(B, Hkv, Tk, D, generator=g).to(dtype),
            torch.randn(B, Hkv, Tk, D, generator=g).to(dtype))


def _math(q, k, v, **kw):
    """torch's math SDPA backend (GQA expanded by hand)."""
    G = q.shape[1] // k.shape[1]
    with sdpa_kernel([SDPBackend.MATH]):
        return F.scaled_dot_product_attention(q, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), **kw)


# -- bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS, ids=["naive", "flash"])
@pytest.mark.parametrize("generator", [5, "seed", torch.tensor(3)])
def test_a_generator_that_is_no_generator_is_named(kernel, generator) -> None:
    """Regression: flash_attention raised AttributeError ('int' object has no attribute 'device') and the naive
    kernel a TypeError from deep inside torch.rand; both now name the argument."""
    with pytest.raises(ValueError, match="generator must be None or a torch.Generator"):
        kernel(*_qkv(), dropout_p=0.2, generator=generator)
    with pytest.raises(ValueError, match="generator"):  # refused whatever dropout_p is, not only when drawn from
        kernel(*_qkv(), generator=generator)


@pytest.mark.parametrize("kernel", KERNELS, ids=["naive", "flash"])
def test_dropout_with_a_generator_is_reproducible(kernel) -> None:
    q, k, v = _qkv(H=4, Hkv=2, Tq=9, Tk=13)
    a = kernel(q, k, v, dropout_p=0.3, generator=torch.Generator().manual_seed(1))
    b = kernel(q, k, v, dropout_p=0.3, generator=torch.Generator().manual_seed(1))
    c = kernel(q, k, v, dropout_p=0.3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


# -- half precision against SDPA's CPU backends ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kernel", KERNELS, ids=["naive", "flash"])
def test_half_precision_sits_on_torchs_math_backend(dtype, kernel) -> None:
    """torch 2.13 runs bf16 / fp16 CPU SDPA in its flash kernel, which rounds exp(s - max) to the input dtype
    before P @ V; its math backend (and mlcore) keep float32 to the end. mlcore is as far from the default kernel
    as the math backend is, and on nearly every element equal to the float64 result rounded once."""
    q, k, v = _qkv(B=2, H=4, Hkv=2, Tq=17, Tk=70, D=40, dtype=dtype, seed=3)
    mask = torch.randn(2, 1, 17, 70, generator=torch.Generator().manual_seed(4)).to(dtype)
    ours = kernel(q, k, v, attn_mask=mask)
    exact = _math(q.double(), k.double(), v.double(), attn_mask=mask.double()).to(dtype)
    math_ = _math(q, k, v, attn_mask=mask)
    assert (ours == exact).float().mean() > 0.995
    step = torch.finfo(dtype).eps * 4  # a unit in the last place of values below 4
    assert (ours.float() - math_.float()).abs().max() <= step


# -- decode shapes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS, ids=["naive", "flash"])
@pytest.mark.parametrize("Tq,Tk,D", [(1, 300, 1), (1, 65, 7), (3, 200, 33), (5, 5, 12), (7, 4, 5)])
def test_causal_with_cached_keys_is_torchs_lower_right_mask(kernel, Tq, Tk, D) -> None:
    """is_causal with Tq != Tk is bottom-right aligned (DESIGN.md), i.e. torch's ``causal_lower_right``; a row
    with no key (Tq > Tk) gives zeros where torch's lower-right bias gives NaN."""
    from torch.nn.attention.bias import causal_lower_right

    q, k, v = _qkv(B=2, H=6, Hkv=2, Tq=Tq, Tk=Tk, D=D, dtype=torch.float64, seed=Tq + Tk)
    allowed = causal_lower_right(Tq, Tk)._materialize() if Tq <= Tk else torch.ones(Tq, Tk, dtype=torch.bool).tril(Tk - Tq)
    ref = torch.where(allowed.any(-1, keepdim=True), _math(q, k, v, attn_mask=allowed), 0.0)
    torch.testing.assert_close(kernel(q, k, v, is_causal=True), ref, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("kernel", KERNELS, ids=["naive", "flash"])
@pytest.mark.parametrize("shape", [(1, 1, 4, 9), (2, 1, 1, 9), (4, 9), (2, 6, 4, 9), (9,)])
@pytest.mark.parametrize("kind", ["bool", "-inf", "finfo.min"])
def test_broadcast_masks_and_rows_that_see_nothing(kernel, shape, kind) -> None:
    """Every broadcast mask shape; a row masked whole gives zeros, as torch 2.13 gives for a bool mask (all its CPU
    backends), and the same values as torch for a whole row of finfo.min (a uniform average)."""
    q, k, v = _qkv(B=2, H=6, Hkv=3, Tq=4, Tk=9, D=8, dtype=torch.float64, seed=9)
    g = torch.Generator().manual_seed(10)
    hidden = torch.rand(shape, generator=g) < 0.4
    if len(shape) > 1:
        hidden[..., 0, :] = True  # a whole row hidden
    if kind == "bool":
        mask = ~hidden
    else:
        fill = -math.inf if kind == "-inf" else torch.finfo(torch.float64).min
        mask = torch.randn(shape, generator=g, dtype=torch.float64).masked_fill(hidden, fill)
    ref = _math(q, k, v, attn_mask=mask)
    if kind != "finfo.min":  # torch gives zeros for a bool row too; an additive -inf row gives NaN in its math kernel
        sees = (mask if kind == "bool" else mask > -math.inf).expand(2, 6, 4, 9).any(-1, keepdim=True)
        ref = torch.where(sees, ref, 0.0)
    torch.testing.assert_close(kernel(q, k, v, attn_mask=mask), ref, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_long_cached_keys_in_half_precision_do_not_overflow(dtype) -> None:
    """Tq = 1..4 over 8192 keys with scores beyond fp16's range: scores stay float32, as in torch's CPU kernels."""
    g = torch.Generator().manual_seed(0)
    q = (torch.randn(1, 2, 4, 64, generator=g) * 40).to(dtype)
    k = (torch.randn(1, 2, 8192, 64, generator=g) * 40).to(dtype)
    v = torch.randn(1, 2, 8192, 64, generator=g).to(dtype)
    exact = _math(q.double(), k.double(), v.double())
    err_torch = (F.scaled_dot_product_attention(q, k, v).double() - exact).abs().max()
    for kernel in KERNELS:
        out = kernel(q, k, v)
        assert torch.isfinite(out).all()
        assert (out.double() - exact).abs().max() <= err_torch


# -- MultiHeadAttention with every cache kind -----------------------------------------------------------------


def _reference(m: MultiHeadAttention, x: torch.Tensor, window: int | None, rope_cfg) -> torch.Tensor:
    """float64, every position at once: plain linear layers, transformers' Llama RoPE, BLOOM's ALiBi tensor and
    torch's math SDPA with an explicit causal / window mask."""
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    sd = {k: v.double() for k, v in m.state_dict().items() if "proj" in k}
    B, T, _ = x.shape
    H, Hkv, D = m.n_heads, m.n_kv_heads, m.head_dim
    xd = x.double()
    q = F.linear(xd, sd["q_proj.weight"]).view(B, T, H, D).transpose(1, 2)
    k = F.linear(xd, sd["k_proj.weight"]).view(B, T, Hkv, D).transpose(1, 2)
    v = F.linear(xd, sd["v_proj.weight"]).view(B, T, Hkv, D).transpose(1, 2)
    if rope_cfg is not None:
        cos, sin = LlamaRotaryEmbedding(rope_cfg)(xd, torch.arange(T).expand(B, T))
        q, k = apply_rotary_pos_emb(q, k, cos.double(), sin.double())
    i, j = torch.arange(T)[:, None], torch.arange(T)[None]
    allowed = (j <= i) & ((j > i - window) if window else True)
    bias = torch.zeros(B, H, T, T, dtype=torch.float64)
    if m.alibi:
        bias = bias + build_alibi_tensor(torch.ones(B, T, dtype=torch.long), H, torch.float64).view(B, H, 1, T)
    o = _math(q, k, v, attn_mask=bias.masked_fill(~allowed, -math.inf))
    return F.linear(o.transpose(1, 2).reshape(B, T, H * D), sd["o_proj.weight"])


@pytest.mark.parametrize("cache_kind", ["dynamic", "static", "static_full_view", "paged", "sliding"])
@pytest.mark.parametrize("pe,window", [("rope", None), ("rope", 3), ("alibi", None), ("alibi", 2)])
@pytest.mark.parametrize("backend", ["naive", "flash", "torch"])
def test_decode_steps_with_every_cache_equal_the_reference(cache_kind, pe, window, backend) -> None:
    from transformers import LlamaConfig

    torch.manual_seed(11)
    T, H, Hkv, D = 9, 6, 2, 8
    cfg = rope = None
    if pe == "rope":
        cfg = LlamaConfig(hidden_size=H * D, num_attention_heads=H, num_key_value_heads=Hkv, head_dim=D,
                          max_position_embeddings=32)
        rope = RotaryEmbedding.from_hf_config(cfg)
    m = MultiHeadAttention(24, H, n_kv_heads=Hkv, head_dim=D, rope=rope, alibi=pe == "alibi",
                           sliding_window=window, backend=backend).eval()
    x = torch.randn(2, T, 24)
    cache = {"dynamic": DynamicCache(), "static": StaticCache(T + 2),
             "static_full_view": StaticCache(T + 2, full_view=True), "paged": PagedCache(16, 2),
             "sliding": SlidingWindowCache(window or T, rope=rope)}[cache_kind]
    with torch.no_grad():
        steps = [m(x[:, :3], cache=cache), m(x[:, 3:5], cache=cache)]
        steps += [m(x[:, t: t + 1], cache=cache) for t in range(5, T)]
    torch.testing.assert_close(torch.cat(steps, 1).double(), _reference(m, x, window, cfg), atol=2e-6, rtol=1e-5)


def test_int8_cache_steps_stay_close_to_the_full_forward() -> None:
    """The int8 cache attends the prefill's own keys exactly and earlier ones through int8: the prefill equals the
    full forward, the later steps stay close (the scratch fuzzer compared them to a reference on int8 keys)."""
    torch.manual_seed(12)
    m = MultiHeadAttention(16, 4, n_kv_heads=2, rope=RotaryEmbedding(4), sliding_window=4).eval()
    x = torch.randn(1, 6, 16)
    with torch.no_grad():
        cache = QuantizedCache(2)
        steps = [m(x[:, :3], cache=cache)] + [m(x[:, t: t + 1], cache=cache) for t in range(3, 6)]
        full = m(x)
    out = torch.cat(steps, 1)
    torch.testing.assert_close(out[:, :3], full[:, :3])  # the prefill saw no quantized key
    assert 0 < (out - full).abs().max() < 0.05  # later steps read int8 keys: close, not equal
