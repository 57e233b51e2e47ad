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


@pytest.mark.parametrize("factor", [float("nan"), float("inf")])
def test_non_finite_factor_is_named(factor: float) -> None:
    # nan passed "factor <= 0" and gave NaN cos/sin; inf divided every frequency to 0 (no rotation at all)
    with pytest.raises(ValueError, match="factor"):
        RotaryEmbedding(8, scaling={"rope_type": "linear", "factor": factor})
    with pytest.raises(ValueError, match="factor"):
        rope_inv_freq(8, scaling={"rope_type": "dynamic", "factor": factor})


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), "2"])
def test_longrope_factors_must_be_positive_finite(bad) -> None:
    # 1 / (0 * base^e) made infinite angles: NaN cos/sin from the first position on
    good = [1.0, 1.5, 2.0, 3.0]
    for key in ("short_factor", "long_factor"):
        scaling = {"rope_type": "longrope", "short_factor": good, "long_factor": good,
                   "original_max_position_embeddings": 16}
        scaling[key] = [*good[:3], bad]
        with pytest.raises(ValueError, match=key):
            RotaryEmbedding(8, scaling=scaling, max_position_embeddings=64)


@pytest.mark.parametrize("key", ["mscale", "mscale_all_dim"])
def test_yarn_mscale_must_be_a_number(key: str) -> None:
    scaling = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "mscale": 1.0,
               "mscale_all_dim": 0.5}
    scaling[key] = "1.0"  # was a TypeError from deep in the attention-factor formula
    with pytest.raises(ValueError, match=key):
        RotaryEmbedding(8, scaling=scaling, max_position_embeddings=64)


def test_base_max_positions_and_partial_factor_of_the_wrong_kind_are_named() -> None:
    with pytest.raises(ValueError, match="base"):  # inf made every theta_i but the first 0
        RotaryEmbedding(8, base=float("inf"))
    for max_pos in (10.5, "10"):  # were int()-ed silently: 10.5 -> 10
        with pytest.raises(ValueError, match="max_position_embeddings"):
            RotaryEmbedding(8, max_position_embeddings=max_pos)
    with pytest.raises(ValueError, match="partial_rotary_factor"):  # was TypeError: '<' between float and str
        RotaryEmbedding(8, partial_rotary_factor="0.5")
    with pytest.raises(ValueError, match="position_ids"):  # was AttributeError: 'list' has no 'dtype'
        RotaryEmbedding(8)([[0, 1, 2]])


def test_integer_x_is_refused_not_truncated() -> None:
    """transformers' rotation of an integer tensor gives floats; ours rounded them back to integers silently."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    cos, sin = RotaryEmbedding(8)(torch.arange(3)[None])
    x = torch.arange(48).view(1, 2, 3, 8)
    ref, _ = apply_rotary_pos_emb(x, x, cos, sin)
    assert ref.dtype.is_floating_point and not torch.equal(ref, ref.round())  # the reference is not integral
    with pytest.raises(ValueError, match="x must have a floating dtype"):
        apply_rotary(x, cos, sin)
    torch.testing.assert_close(apply_rotary(x.float(), cos, sin), ref)
