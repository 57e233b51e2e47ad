"""RoPE refuses bad input with ValueErrors that name the argument."""

from __future__ import annotations

import pytest
import torch

from mlcore.positional import RotaryEmbedding, apply_rotary, interleaved_to_half, rope_inv_freq


@pytest.mark.parametrize("head_dim", [7, 1])
def test_odd_head_dim(head_dim: int) -> None:
    with pytest.raises(ValueError, match="head_dim"):
        RotaryEmbedding(head_dim)
    with pytest.raises(ValueError, match="head_dim"):
        rope_inv_freq(head_dim)


def test_odd_partial_rotary_dim() -> None:
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        RotaryEmbedding(16, partial_rotary_factor=0.3125)  # 5 dims
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        RotaryEmbedding(16, partial_rotary_factor=1.5)


def test_unknown_rope_type() -> None:
    with pytest.raises(ValueError, match="rope_type"):
        RotaryEmbedding(16, scaling={"rope_type": "longrope2", "factor": 2.0})


@pytest.mark.parametrize(
    "scaling,missing",
    [
        ({"rope_type": "linear"}, "factor"),
        ({"rope_type": "dynamic"}, "factor"),
        ({"rope_type": "yarn", "factor": 2.0}, "original_max_position_embeddings"),
        ({"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 64, "low_freq_factor": 1.0},
         "high_freq_factor"),
    ],
)
def test_missing_scaling_keys(scaling: dict, missing: str) -> None:
    with pytest.raises(ValueError, match=missing):
        RotaryEmbedding(16, scaling=scaling)


@pytest.mark.parametrize("rope_type", ["linear", "dynamic", "yarn", "llama3"])
@pytest.mark.parametrize("factor", [0, -2.0, "4", None, True])
def test_factor_not_a_positive_number(rope_type: str, factor: object) -> None:
    scaling = {"rope_type": rope_type, "factor": factor, "original_max_position_embeddings": 64,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    if rope_type == "yarn" and factor is None:
        return  # YaRN infers a missing factor from the context lengths (DeepSeek-style configs)
    with pytest.raises(ValueError, match="factor"):
        RotaryEmbedding(16, scaling=scaling)


def test_llama3_band_order() -> None:
    with pytest.raises(ValueError, match="high_freq_factor"):
        RotaryEmbedding(16, scaling={"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 64,
                                     "low_freq_factor": 4.0, "high_freq_factor": 1.0})


def test_bad_positions_and_shapes() -> None:
    rope = RotaryEmbedding(16)
    with pytest.raises(ValueError, match="position_ids"):
        rope(torch.zeros(1, 3))  # float
    with pytest.raises(ValueError, match="position_ids"):
        rope(torch.zeros(1, 2, 3, dtype=torch.long))
    cos, sin = rope(torch.arange(4)[None])
    with pytest.raises(ValueError, match="x must have shape"):
        apply_rotary(torch.randn(4, 16), cos, sin)
    with pytest.raises(ValueError, match="cos/sin"):
        apply_rotary(torch.randn(1, 2, 5, 16), cos, sin)  # T mismatch
    with pytest.raises(ValueError, match="rotary_dim"):
        apply_rotary(torch.randn(1, 2, 4, 8), cos, sin)  # rotary_dim > D
    with pytest.raises(ValueError, match="head_dim"):
        interleaved_to_half(torch.randn(10, 3), head_dim=4)


@pytest.mark.parametrize(("scaling", "key"), [
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 0}, "original_max_position_embeddings"),
    ({"rope_type": "yarn", "factor": 4.0, "beta_fast": -1, "original_max_position_embeddings": 32}, "beta_fast"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 64}, "low_freq_factor"),
    ({"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
      "original_max_position_embeddings": 1}, "original_max_position_embeddings"),
])
def test_scaling_values_the_formulas_divide_by_are_named(scaling: dict, key: str) -> None:
    # transformers ends these in ZeroDivisionError / "math domain error"
    with pytest.raises(ValueError, match=key):
        RotaryEmbedding(16, scaling=scaling, max_position_embeddings=128)
