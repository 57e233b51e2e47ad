"""RoPE inverse frequencies and attention factors vs transformers' ``ROPE_INIT_FUNCTIONS`` (same LlamaConfig)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from mlcore.positional import RotaryEmbedding, rope_inv_freq

from ._hf import MAX_POS, llama_config, scaling_of

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 256}

CASES = [
    ({"rope_type": "linear", "factor": 2.0}, 10000.0),
    ({"rope_type": "linear", "factor": 8.0}, 500000.0),
    ({"rope_type": "dynamic", "factor": 2.0}, 10000.0),
    (YARN, 10000.0),
    ({**YARN, "factor": 16.0, "beta_fast": 16, "beta_slow": 2}, 10000.0),
    ({**YARN, "mscale": 0.707, "mscale_all_dim": 0.707}, 10000.0),  # DeepSeek-V2 style: factor cancels
    ({**YARN, "mscale": 1.0, "mscale_all_dim": 0.5}, 10000.0),
    ({**YARN, "attention_factor": 1.25}, 10000.0),
    ({**YARN, "truncate": False}, 10000.0),
    ({**YARN, "original_max_position_embeddings": 4096, "factor": 32.0}, 1000000.0),
    (LLAMA3, 10000.0),
    ({**LLAMA3, "original_max_position_embeddings": 8192}, 500000.0),
    # factor < 1: transformers warns but runs, and so do we
    ({"rope_type": "linear", "factor": 0.5}, 10000.0),
    ({"rope_type": "dynamic", "factor": 0.5}, 10000.0),
    ({**YARN, "factor": 0.5}, 10000.0),
    ({**LLAMA3, "factor": 0.5}, 10000.0),
]


def _hf(config: LlamaConfig, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    rope_type = config.rope_parameters["rope_type"]
    if rope_type == "default":
        return LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    return ROPE_INIT_FUNCTIONS[rope_type](config, None, seq_len=seq_len)


@pytest.mark.parametrize("theta", [10000.0, 500000.0])
@pytest.mark.parametrize("head_dim", [16, 64])
def test_default_matches_hf(head_dim: int, theta: float) -> None:
    ref, ref_af = _hf(llama_config(head_dim=head_dim, theta=theta))
    ours, af = rope_inv_freq(head_dim, base=theta, max_position_embeddings=MAX_POS)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)
    assert af == ref_af == 1.0


@pytest.mark.parametrize("head_dim", [16, 64])
@pytest.mark.parametrize("params,theta", CASES, ids=lambda v: str(v) if isinstance(v, float) else v["rope_type"])
def test_scaled_matches_hf(params: dict, theta: float, head_dim: int) -> None:
    config = llama_config(params, head_dim=head_dim, theta=theta)
    ref, ref_af = _hf(config)
    ours, af = rope_inv_freq(head_dim, base=theta, scaling=scaling_of(params), max_position_embeddings=MAX_POS)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)
    assert af == pytest.approx(ref_af, rel=1e-12)
    # the module, built directly and from the config, holds the same numbers
    for rope in (RotaryEmbedding(head_dim, base=theta, max_position_embeddings=MAX_POS, scaling=scaling_of(params)),
                 RotaryEmbedding.from_hf_config(config)):
        torch.testing.assert_close(rope.inv_freq, ref, rtol=1e-6, atol=0)
        assert rope.attention_factor == pytest.approx(ref_af, rel=1e-12)


def test_scalings_change_something() -> None:
    """Guard against a vacuous comparison: every scaling moves some frequency away from plain RoPE."""
    plain, _ = rope_inv_freq(64, base=10000.0)
    for params, theta in CASES:
        if params["rope_type"] == "dynamic" or theta != 10000.0:
            continue
        scaled, _ = rope_inv_freq(64, base=theta, scaling=params, max_position_embeddings=MAX_POS)
        assert not torch.allclose(scaled, plain), params


@pytest.mark.parametrize("factor", [2.0, 4.0])
@pytest.mark.parametrize("seq_len", [None, 1, 17, MAX_POS - 1, MAX_POS, MAX_POS + 1, 100, 500, 4096])
def test_dynamic_ntk_matches_hf(factor: float, seq_len: int | None) -> None:
    params = {"rope_type": "dynamic", "factor": factor}
    ref, ref_af = _hf(llama_config(params), seq_len=seq_len)
    ours, af = rope_inv_freq(16, scaling=params, max_position_embeddings=MAX_POS, seq_len=seq_len)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)
    assert af == ref_af
    if seq_len is not None and seq_len > MAX_POS:  # the base really grew
        assert ours[-1] < rope_inv_freq(16, max_position_embeddings=MAX_POS)[0][-1]


def test_yarn_factor_inferred_from_context_ratio() -> None:
    """DeepSeek-V3 style: no factor -> max_position_embeddings / original_max_position_embeddings."""
    params = {"rope_type": "yarn", "factor": None, "original_max_position_embeddings": 16}
    config = llama_config(params)
    ref, ref_af = ROPE_INIT_FUNCTIONS["yarn"](config, None)
    ours, af = rope_inv_freq(16, scaling=params, max_position_embeddings=MAX_POS)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)
    assert af == pytest.approx(ref_af)


def test_from_hf_config_reads_v4_style_rope_scaling() -> None:
    """A v4-style config (rope_theta + rope_scaling with the old ``type`` key) standardised by transformers."""
    config = LlamaConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=1, vocab_size=32,
                         max_position_embeddings=MAX_POS, rope_theta=500.0,
                         rope_scaling={"type": "linear", "factor": 3.0})
    ref, _ = ROPE_INIT_FUNCTIONS["linear"](config, None)
    rope = RotaryEmbedding.from_hf_config(config)
    assert rope.rope_type == "linear" and rope.base == 500.0
    torch.testing.assert_close(rope.inv_freq, ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "params,theta,head_dim",
    [
        ({**YARN, "factor": 40.0, "mscale": 1.0, "mscale_all_dim": 1.0}, 10000.0, 64),  # DeepSeek-V3-like factor
        ({**YARN, "factor": 5.0}, 1000000.0, 80),
        ({"rope_type": "dynamic", "factor": 3.0}, 500000.0, 80),
        ({"rope_type": "dynamic", "factor": 4.0}, 1000000.0, 64),
        ({**LLAMA3, "factor": 6.0, "low_freq_factor": 1.5, "high_freq_factor": 3.0}, 500000.0, 128),
    ],
)
def test_cos_sin_bit_identical_to_llama_at_long_positions(params: dict, theta: float, head_dim: int) -> None:
    """Regression: YaRN divided theta_i by a non-power-of-two factor in another order than transformers (1 ulp),
    and dynamic NTK computed the grown base in float64 where transformers' forward uses float32 tensors; at
    position 1e5 that moved cos/sin by up to 2e-3. Both now round exactly as LlamaRotaryEmbedding does."""
    config = llama_config(params, head_dim=head_dim, max_pos=4096, theta=theta)
    position_ids = torch.tensor([[0, 1, 4095, 4096, 10000, 65535, 100000, 131071]])
    ref_cos, ref_sin = LlamaRotaryEmbedding(config)(torch.zeros(1), position_ids)
    cos, sin = RotaryEmbedding.from_hf_config(config)(position_ids)
    torch.testing.assert_close(cos, ref_cos, rtol=0, atol=0)
    torch.testing.assert_close(sin, ref_sin, rtol=0, atol=0)


def test_from_hf_config_accepts_a_config_json_dict() -> None:
    """A plain dict (config.json as read by json.load), v4 keys, including GPT-NeoX's rotary_pct / rotary_emb_base."""
    from transformers import GPTNeoXConfig
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding

    d = {"hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": MAX_POS, "rope_theta": 500.0,
         "rope_scaling": {"type": "linear", "factor": 3.0}}
    ref, _ = ROPE_INIT_FUNCTIONS["linear"](LlamaConfig(**d), None)
    torch.testing.assert_close(RotaryEmbedding.from_hf_config(d).inv_freq, ref, rtol=0, atol=0)
    neox = {"hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": MAX_POS, "rotary_pct": 0.25,
            "rotary_emb_base": 20000}
    pos = torch.arange(10)[None]
    ref_cos, _ = GPTNeoXRotaryEmbedding(GPTNeoXConfig(**neox))(torch.zeros(1), pos)
    cos, _ = RotaryEmbedding.from_hf_config(neox)(pos)
    torch.testing.assert_close(cos, ref_cos, rtol=0, atol=0)


def _longrope(head_dim: int, **extra) -> dict:
    g = torch.Generator().manual_seed(head_dim)
    return {"rope_type": "longrope", "original_max_position_embeddings": 16,
            "short_factor": (1 + torch.rand(head_dim // 2, generator=g)).tolist(),
            "long_factor": (1 + 8 * torch.rand(head_dim // 2, generator=g)).tolist(), **extra}


@pytest.mark.parametrize("head_dim", [16, 64])
@pytest.mark.parametrize("extra", [{}, {"factor": 4.0}, {"attention_factor": 1.25}], ids=["ratio", "factor", "af"])
def test_longrope_matches_hf(head_dim: int, extra: dict) -> None:
    """LongRoPE (Phi-3): short factors while the call's longest position is within L0 = 16, long ones past it;
    the attention factor from ``factor`` or, without it, max_position_embeddings / L0."""
    params = _longrope(head_dim, **extra)
    config = llama_config(params, head_dim=head_dim)
    for seq_len in (None, 16, 17, 64):
        ref, ref_af = _hf(config, seq_len=seq_len)
        ours, af = rope_inv_freq(head_dim, scaling=scaling_of(params), max_position_embeddings=MAX_POS,
                                 seq_len=seq_len)
        torch.testing.assert_close(ours, ref, rtol=0, atol=0)
        assert af == pytest.approx(ref_af, rel=1e-12)
    hf_rope, rope = LlamaRotaryEmbedding(config), RotaryEmbedding.from_hf_config(config)
    for stop in (10, 16, 17, 40):  # one call per length, as a forward sees it: switches at L0 + 1
        position_ids = torch.arange(stop)[None]
        ref_cos, ref_sin = hf_rope(torch.zeros(1), position_ids)
        cos, sin = rope(position_ids)
        torch.testing.assert_close(cos, ref_cos, rtol=0, atol=0)
        torch.testing.assert_close(sin, ref_sin, rtol=0, atol=0)
    with pytest.raises(ValueError, match="long_factor"):
        RotaryEmbedding(head_dim, scaling={**params, "long_factor": params["long_factor"][:-1]})
