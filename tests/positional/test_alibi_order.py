"""The head order ``alibi_slopes``' docstring describes is the order BLOOM's ``build_alibi_tensor`` produces."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.models.bloom.modeling_bloom import build_alibi_tensor

from mlcore.positional import alibi_slopes


def _bloom_slopes(n_heads: int) -> torch.Tensor:
    return build_alibi_tensor(torch.ones(1, 2, dtype=torch.long), n_heads, torch.float32)[:, 0, 1]


def _documented(n_heads: int) -> list[float]:
    """The docstring's rule: n = 2^floor(log2 H) decreasing slopes 2^(-8k/n), then odd powers 2^(-4(2k-1)/n)."""
    n = 2 ** math.floor(math.log2(n_heads))
    return [2.0 ** (-8 * k / n) for k in range(1, n + 1)] + [2.0 ** (-4 * (2 * k - 1) / n)
                                                             for k in range(1, n_heads - n + 1)]


def test_six_heads_example_from_the_docstring():
    expected = [0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]
    assert alibi_slopes(6).tolist() == expected == _bloom_slopes(6).tolist()
    assert int(alibi_slopes(6).argmax()) == 4  # not "largest first"


@pytest.mark.parametrize("n_heads", [1, 2, 3, 5, 6, 8, 12, 20, 33, 64])
def test_documented_order_matches_bloom(n_heads: int) -> None:
    torch.testing.assert_close(_bloom_slopes(n_heads), torch.tensor(_documented(n_heads)), rtol=1e-6, atol=0)
    slopes = alibi_slopes(n_heads)
    is_sorted = bool((slopes[:-1] > slopes[1:]).all())
    assert is_sorted == (n_heads & (n_heads - 1) == 0)  # decreasing exactly when H is a power of two
