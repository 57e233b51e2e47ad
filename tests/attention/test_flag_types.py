"""Flags and masks of the wrong type or shape are refused by name, where torch's SDPA refuses them too.

Before, ``is_causal="no"`` read as True (a truthy string), a multi-element ``dropout_p`` tensor failed inside
``float()``, masks that do not broadcast failed inside ``&`` / ``+``, and a list of positions inside ``.dim()``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlcore.attention import MultiHeadAttention, combine_masks, flash_attention, scaled_dot_product_attention

KERNELS = [scaled_dot_product_attention, flash_attention]


def _qkv() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(1, 2, 3, 4, generator=g) for _ in range(3))  # type: ignore[return-value]


@pytest.mark.parametrize("kernel", KERNELS, ids=["naive", "flash"])
@pytest.mark.parametrize("flag", ["no", "False", None, 1, np.bool_(True), torch.tensor(True)], ids=repr)
def test_is_causal_must_be_a_bool_as_in_torch(kernel, flag) -> None:
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="is_causal"):  # the reference refuses every one of these
        F.scaled_dot_product_attention(q, k, v, is_causal=flag)
    with pytest.raises(ValueError, match="is_causal must be a bool"):
        kernel(q, k, v, is_causal=flag)
    # a real bool still works and matches torch (square: top-left == bottom-right)
    torch.testing.assert_close(kernel(q, k, v, is_causal=True), F.scaled_dot_product_attention(q, k, v, is_causal=True))


@pytest.mark.parametrize("kernel", KERNELS, ids=["naive", "flash"])
def test_dropout_p_tensor_of_several_values_is_named(kernel) -> None:
    q, k, v = _qkv()
    p = torch.tensor([0.1, 0.2])
    with pytest.raises(TypeError, match="dropout_p"):
        F.scaled_dot_product_attention(q, k, v, dropout_p=p)
    with pytest.raises(ValueError, match="dropout_p must be a number"):
        kernel(q, k, v, dropout_p=p)
    out = kernel(q, k, v, dropout_p=torch.tensor(0.0))  # a 0-d tensor is a number, as torch takes it
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))


def test_combine_masks_that_do_not_broadcast_are_named() -> None:
    a = torch.ones(3, 5, dtype=torch.bool)
    for b in (torch.ones(4, 5, dtype=torch.bool), torch.zeros(4, 5)):
        with pytest.raises(ValueError, match=r"\(3, 5\), \(4, 5\)\] do not broadcast"):
            combine_masks(a, b)
    assert combine_masks(a, torch.ones(1, 5, dtype=torch.bool)).shape == (3, 5)  # broadcasting still works


def test_position_ids_that_are_not_a_tensor_are_named() -> None:
    from mlcore.positional import RotaryEmbedding

    mha = MultiHeadAttention(8, 2, rope=RotaryEmbedding(4)).eval()
    with pytest.raises(ValueError, match="position_ids must be a \\(B, T\\) integer tensor, got list"):
        mha(torch.randn(1, 3, 8), position_ids=[[0, 1, 2]])


@pytest.mark.parametrize("flag", ["no", 0, None, np.bool_(True)], ids=repr)
def test_return_weights_and_use_triton_must_be_bools(flag) -> None:
    """``return_weights="no"`` returned an (out, weights) tuple and ``use_triton="no"`` demanded Triton (a truthy
    string), as ``is_causal="no"`` once applied a causal mask; both are named now."""
    q, k, v = _qkv()
    if flag is not None:  # None is flash's "choose for me"
        with pytest.raises(ValueError, match="use_triton must be None or a bool"):
            flash_attention(q, k, v, use_triton=flag)
    with pytest.raises(ValueError, match="return_weights must be a bool"):
        scaled_dot_product_attention(q, k, v, return_weights=flag)
    out, w = scaled_dot_product_attention(q, k, v, return_weights=True)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    torch.testing.assert_close(flash_attention(q, k, v, use_triton=False), out)
