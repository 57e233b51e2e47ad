"""RoPE cos/sin and rotations vs transformers: Llama (rotate-half), GPT-NeoX (partial), GPT-J (interleaved)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GPTJConfig, GPTNeoXConfig, MistralConfig, Qwen2Config
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding
from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb as neox_apply
from transformers.models.gptj.modeling_gptj import GPTJRotaryEmbedding
from transformers.models.gptj.modeling_gptj import apply_rotary_pos_emb as gptj_apply
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from mlcore.positional import (
    RotaryEmbedding,
    alibi_bias,
    apply_rotary,
    half_to_interleaved,
    interleaved_to_half,
)

from ._hf import HEAD_DIM, MAX_POS, llama_config, scaling_of
from .test_rope_scaling import LLAMA3, YARN

B, H, T = 2, 3, 12


def _left_padded_positions(pad: int) -> torch.Tensor:
    """Row 0 unpadded (0..T-1); row 1 left-padded by ``pad`` (positions as generate computes them)."""
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, :pad] = 0
    return ((mask.cumsum(-1) - 1) * mask).long()


@pytest.mark.parametrize(
    "params",
    [{}, {"rope_type": "linear", "factor": 4.0}, YARN, {**YARN, "mscale": 1.0, "mscale_all_dim": 0.5}, LLAMA3],
    ids=["default", "linear", "yarn", "yarn-mscale", "llama3"],
)
def test_cos_sin_and_rotation_match_llama(params: dict) -> None:
    config = llama_config(params)
    ref_rope = LlamaRotaryEmbedding(config)
    rope = RotaryEmbedding.from_hf_config(config)
    position_ids = torch.stack([torch.arange(T), torch.arange(T) + 40])  # row 1 starts at 40 (a KV-cache offset)
    q = torch.randn(B, H, T, HEAD_DIM)
    k = torch.randn(B, H, T, HEAD_DIM)
    ref_cos, ref_sin = ref_rope(q, position_ids)
    cos, sin = rope(position_ids)
    assert cos.shape == (B, T, HEAD_DIM) and cos.dtype == torch.float32
    torch.testing.assert_close(cos, ref_cos, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sin, ref_sin, rtol=1e-6, atol=1e-6)
    ref_q, ref_k = apply_rotary_pos_emb(q, k, ref_cos, ref_sin)
    torch.testing.assert_close(apply_rotary(q, cos, sin), ref_q, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(apply_rotary(k, cos, sin), ref_k, rtol=1e-5, atol=1e-6)


def test_left_padded_batch_matches_llama() -> None:
    config = llama_config()
    position_ids = _left_padded_positions(pad=5)
    q = torch.randn(B, H, T, HEAD_DIM)
    ref_cos, ref_sin = LlamaRotaryEmbedding(config)(q, position_ids)
    cos, sin = RotaryEmbedding.from_hf_config(config)(position_ids)
    ref_q, _ = apply_rotary_pos_emb(q, q, ref_cos, ref_sin)
    ours = apply_rotary(q, cos, sin)
    torch.testing.assert_close(ours, ref_q, rtol=1e-5, atol=1e-6)
    # the padded row's real tokens are rotated exactly as the same tokens unpadded at positions 0..T-6
    solo_cos, solo_sin = RotaryEmbedding(HEAD_DIM)(torch.arange(T - 5)[None])
    torch.testing.assert_close(ours[1:, :, 5:], apply_rotary(q[1:, :, 5:], solo_cos, solo_sin))


def test_bf16_input_keeps_dtype() -> None:
    cos, sin = RotaryEmbedding(HEAD_DIM)(torch.arange(T)[None])
    q = torch.randn(1, H, T, HEAD_DIM)
    out = apply_rotary(q.bfloat16(), cos, sin)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), apply_rotary(q, cos, sin), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("factor", [2.0, 4.0])
@pytest.mark.parametrize("length", [1, 30, MAX_POS, MAX_POS + 1, 100, 300])
def test_dynamic_ntk_matches_fresh_hf_module(factor: float, length: int) -> None:
    """Stateless dynamic NTK (longest position in the call) equals a fresh LlamaRotaryEmbedding at every length."""
    config = llama_config({"rope_type": "dynamic", "factor": factor})
    position_ids = torch.arange(length)[None].expand(B, -1)
    x = torch.randn(B, 1, length, HEAD_DIM)
    ref_cos, ref_sin = LlamaRotaryEmbedding(config)(x, position_ids)
    rope = RotaryEmbedding(HEAD_DIM, max_position_embeddings=MAX_POS, scaling={"rope_type": "dynamic", "factor": factor})
    cos, sin = rope(position_ids)
    torch.testing.assert_close(cos, ref_cos, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(sin, ref_sin, rtol=1e-5, atol=2e-5)


def test_dynamic_ntk_documented_stateful_difference() -> None:
    """HF keeps grown frequencies for a later shorter call (>= L0); mlcore recomputes from the call's positions."""
    params = {"rope_type": "dynamic", "factor": 2.0}
    hf = LlamaRotaryEmbedding(llama_config(params))
    x = torch.randn(1, 1, 1, HEAD_DIM)
    hf(x, torch.arange(300)[None])  # grows to 300
    later = torch.arange(100)[None]  # shorter, but above L0 = 64: HF does not reset
    hf_cos, _ = hf(x, later)
    fresh_cos, _ = LlamaRotaryEmbedding(llama_config(params))(x, later)
    ours, _ = RotaryEmbedding(HEAD_DIM, max_position_embeddings=MAX_POS, scaling=params)(later)
    torch.testing.assert_close(ours, fresh_cos, rtol=1e-5, atol=2e-5)
    assert not torch.allclose(hf_cos, fresh_cos, atol=1e-3)


def test_partial_rotary_matches_gpt_neox() -> None:
    config = GPTNeoXConfig(hidden_size=4 * HEAD_DIM, num_attention_heads=4, num_hidden_layers=1, vocab_size=32,
                           intermediate_size=32, max_position_embeddings=MAX_POS, rotary_pct=0.5)
    rope = RotaryEmbedding.from_hf_config(config)
    assert rope.rotary_dim == HEAD_DIM // 2
    position_ids = _left_padded_positions(pad=3)
    q = torch.randn(B, H, T, HEAD_DIM)
    ref_cos, ref_sin = GPTNeoXRotaryEmbedding(config)(q, position_ids)
    cos, sin = rope(position_ids)
    torch.testing.assert_close(cos, ref_cos, rtol=1e-6, atol=1e-6)
    ref_q, _ = neox_apply(q, q, ref_cos, ref_sin)
    out = apply_rotary(q, cos, sin)
    torch.testing.assert_close(out, ref_q, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[..., HEAD_DIM // 2:], q[..., HEAD_DIM // 2:], rtol=0, atol=0)


def test_interleaved_matches_gpt_j() -> None:
    """GPT-J rotates adjacent pairs (x[2i], x[2i+1]); q there is (B, T, H, D)."""
    config = GPTJConfig(n_embd=4 * HEAD_DIM, n_head=4, rotary_dim=HEAD_DIM, n_positions=MAX_POS, n_layer=1,
                        vocab_size=32, bos_token_id=0, eos_token_id=0)
    position_ids = _left_padded_positions(pad=4)
    q = torch.randn(B, H, T, HEAD_DIM)
    ref_sin, ref_cos = GPTJRotaryEmbedding(config)(q, position_ids)
    ref = gptj_apply(q.transpose(1, 2), ref_sin, ref_cos).transpose(1, 2)
    cos, sin = RotaryEmbedding(HEAD_DIM, interleaved=True)(position_ids)
    torch.testing.assert_close(apply_rotary(q, cos, sin, interleaved=True), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rotary_dim", [HEAD_DIM, HEAD_DIM // 2])
def test_interleaved_equals_rotate_half_after_permutation(rotary_dim: int) -> None:
    """Rotating interleaved q == rotating the row-permuted (rotate-half) q, then permuting back; both ways."""
    n_heads, d_model = 3, 20
    w = torch.randn(n_heads * HEAD_DIM, d_model)  # a q projection in the interleaved (Meta) layout
    b = torch.randn(n_heads * HEAD_DIM)
    x = torch.randn(B, T, d_model)
    w_half = interleaved_to_half(w, head_dim=HEAD_DIM, rotary_dim=rotary_dim)
    b_half = interleaved_to_half(b, head_dim=HEAD_DIM, rotary_dim=rotary_dim)
    torch.testing.assert_close(half_to_interleaved(w_half, head_dim=HEAD_DIM, rotary_dim=rotary_dim), w)
    assert not torch.equal(w_half, w)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(B, T, n_heads, HEAD_DIM).transpose(1, 2)

    partial = rotary_dim / HEAD_DIM
    pos = _left_padded_positions(pad=2)
    cos_i, sin_i = RotaryEmbedding(HEAD_DIM, interleaved=True, partial_rotary_factor=partial)(pos)
    cos_h, sin_h = RotaryEmbedding(HEAD_DIM, partial_rotary_factor=partial)(pos)
    q_inter = apply_rotary(heads(x @ w.T + b), cos_i, sin_i, interleaved=True)
    q_half = apply_rotary(heads(x @ w_half.T + b_half), cos_h, sin_h)
    back = half_to_interleaved(q_half.transpose(1, 2).reshape(B, T, -1).transpose(0, 2), head_dim=HEAD_DIM,
                               rotary_dim=rotary_dim).transpose(0, 2)
    torch.testing.assert_close(heads(back), q_inter, rtol=1e-5, atol=1e-5)
    # attention scores are identical without permuting back (the same permutation on q and k cancels in q.k)
    k_inter = apply_rotary(heads(x @ w.T), cos_i, sin_i, interleaved=True)
    k_half = apply_rotary(heads(x @ w_half.T), cos_h, sin_h)
    torch.testing.assert_close(q_half @ k_half.transpose(-1, -2), q_inter @ k_inter.transpose(-1, -2),
                               rtol=1e-4, atol=1e-4)


def test_permutation_matches_transformers_llama_conversion() -> None:
    """The permutation transformers' convert_llama_weights_to_hf applies (written out there as view/transpose)."""
    n_heads, dim = 4, 4 * HEAD_DIM
    w = torch.randn(dim, 10)
    ref = w.view(n_heads, dim // n_heads // 2, 2, 10).transpose(1, 2).reshape(dim, 10)
    torch.testing.assert_close(interleaved_to_half(w, head_dim=HEAD_DIM), ref, rtol=0, atol=0)


@pytest.mark.parametrize("config_cls", [Qwen2Config, MistralConfig])
def test_from_hf_config_qwen2_mistral(config_cls: type) -> None:
    config = config_cls(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=1,
                        vocab_size=32, intermediate_size=32, max_position_embeddings=MAX_POS, rope_theta=1e6,
                        rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32})
    model_module = __import__(f"transformers.models.{config.model_type}.modeling_{config.model_type}",
                              fromlist=["x"])
    ref_rope = getattr(model_module, f"{config_cls.__name__[:-6]}RotaryEmbedding")(config)
    pos = torch.arange(T)[None] + 50
    ref_cos, ref_sin = ref_rope(torch.randn(1, 1, T, 16), pos)
    cos, sin = RotaryEmbedding.from_hf_config(config)(pos)
    torch.testing.assert_close(cos, ref_cos, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sin, ref_sin, rtol=1e-6, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(m=st.integers(0, 2000), n=st.integers(0, 2000), shift=st.integers(-500, 500), interleaved=st.booleans(),
       scaled=st.booleans())
def test_score_depends_only_on_offset(m: int, n: int, shift: int, interleaved: bool, scaled: bool) -> None:
    """<R(m) q, R(n) k> == <R(m + s) q, R(n + s) k>: RoPE scores see only the offset m - n."""
    if min(m, n) + shift < 0:
        shift = -min(m, n)
    gen = torch.Generator().manual_seed(m * 7919 + n)
    q = torch.randn(1, 1, 1, 32, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 1, 1, 32, generator=gen, dtype=torch.float64)
    scaling = scaling_of(YARN) if scaled else None
    rope = RotaryEmbedding(32, interleaved=interleaved, scaling=scaling)

    def score(a: int, b: int) -> float:
        ca, sa = rope(torch.tensor([[a]]))
        cb, sb = rope(torch.tensor([[b]]))
        qa = apply_rotary(q, ca.double(), sa.double(), interleaved=interleaved)
        kb = apply_rotary(k, cb.double(), sb.double(), interleaved=interleaved)
        return float((qa * kb).sum())

    assert score(m, n) == pytest.approx(score(m + shift, n + shift), abs=2e-3)


def test_half_precision_module_keeps_float32_frequencies() -> None:
    """``model.to(bfloat16)`` must not round inv_freq: cos/sin stay those of the float32 module."""
    rope = RotaryEmbedding(HEAD_DIM, scaling=scaling_of(YARN))
    pos = torch.arange(1000)[None]
    ref_cos, ref_sin = rope(pos)
    rope = rope.to(torch.bfloat16)
    assert rope.inv_freq.dtype == torch.float32
    cos, sin = rope(pos)
    torch.testing.assert_close(cos, ref_cos, rtol=0, atol=0)
    torch.testing.assert_close(sin, ref_sin, rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.parametrize("params", [{}, {"rope_type": "dynamic", "factor": 2.0}, YARN])
def test_cuda_matches_llama_on_cuda(params: dict) -> None:
    config = llama_config(params)
    pos = torch.arange(100, device="cuda")[None].expand(B, -1)
    q = torch.randn(B, H, 100, HEAD_DIM, device="cuda")
    ref_cos, ref_sin = LlamaRotaryEmbedding(config).cuda()(q, pos)
    rope = RotaryEmbedding.from_hf_config(config).cuda()
    cos, sin = rope(pos)
    assert cos.device.type == "cuda"
    torch.testing.assert_close(cos, ref_cos, rtol=1e-5, atol=1e-5)
    ref_q, _ = apply_rotary_pos_emb(q, q, ref_cos, ref_sin)
    torch.testing.assert_close(apply_rotary(q, cos, sin), ref_q, rtol=1e-5, atol=1e-5)
    bias = alibi_bias(12, 4, 9, device="cuda")
    torch.testing.assert_close(bias.cpu(), alibi_bias(12, 4, 9))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_transformers_call_signature_returns_x_dtype(dtype: torch.dtype) -> None:
    """``rope(x, position_ids)`` as transformers calls it: cos/sin in x's dtype, equal to LlamaRotaryEmbedding's."""
    config = llama_config({"rope_type": "linear", "factor": 3.0})
    x, pos = torch.randn(B, 1, T, HEAD_DIM, dtype=dtype), torch.arange(T)[None].expand(B, T)
    ref_cos, ref_sin = LlamaRotaryEmbedding(config)(x, pos)
    rope = RotaryEmbedding.from_hf_config(config)
    for cos, sin in (rope(x, pos), rope(x, position_ids=pos), rope(pos, dtype=dtype)):
        torch.testing.assert_close(cos, ref_cos, rtol=0, atol=0)
        torch.testing.assert_close(sin, ref_sin, rtol=0, atol=0)
    assert rope(position_ids=pos)[0].dtype == torch.float32
    with pytest.raises(ValueError, match="rope"):
        rope(x, pos, pos)
