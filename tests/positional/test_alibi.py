"""ALiBi slopes and bias vs BLOOM's ``build_alibi_tensor`` (transformers), which follows Press et al.'s code."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.models.bloom.modeling_bloom import build_alibi_tensor

from mlcore.positional import alibi_bias, alibi_slopes


def _bloom_slopes(n_heads: int) -> torch.Tensor:
    """BLOOM's bias for one unpadded row at key position 1 is exactly the slope of each head."""
    alibi = build_alibi_tensor(torch.ones(1, 2, dtype=torch.long), n_heads, torch.float32)  # (H, 1, 2)
    return alibi[:, 0, 1]


@pytest.mark.parametrize("n_heads", [1, 2, 6, 8, 12, 16, 24, 40])
def test_slopes_match_bloom(n_heads: int) -> None:
    torch.testing.assert_close(alibi_slopes(n_heads), _bloom_slopes(n_heads), rtol=1e-6, atol=0)


def test_slopes_bit_identical_to_bloom_for_1_to_64_heads() -> None:
    """Regression: float64 powers rounded to float32 were 1 ulp off BLOOM's float32 powers from 11 heads on."""
    for n_heads in range(1, 65):
        assert torch.equal(alibi_slopes(n_heads), _bloom_slopes(n_heads)), n_heads


def test_slopes_of_eight_heads_are_the_papers() -> None:
    """Press et al. (2022): for 8 heads the slopes are 1/2, 1/4, ..., 1/256."""
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -(h + 1) for h in range(8)]))


@pytest.mark.parametrize("n_heads", [8, 12, 6])
@pytest.mark.parametrize("Tq,Tk", [(7, 7), (1, 9), (3, 10)])
def test_bias_matches_bloom_under_softmax(n_heads: int, Tq: int, Tk: int) -> None:
    """BLOOM adds slope * j (key position) and relies on softmax ignoring a per-row constant; ours adds
    slope * (j - i). Row by row the two differ by a constant, and the causal softmax outputs are identical."""
    ref = build_alibi_tensor(torch.ones(1, Tk, dtype=torch.long), n_heads, torch.float32)  # (H, 1, Tk)
    ours = alibi_bias(n_heads, Tq, Tk)
    assert ours.shape == (n_heads, Tq, Tk) and ours.dtype == torch.float32
    diff = ours - ref  # (H, Tq, Tk): must be constant along keys
    torch.testing.assert_close(diff, diff[..., :1].expand_as(diff), rtol=0, atol=1e-5)
    i = torch.arange(Tq)[:, None] + Tk - Tq
    causal = torch.arange(Tk)[None, :] <= i  # bottom-right aligned
    scores = torch.randn(n_heads, Tq, Tk)
    p_ours = (scores + ours).masked_fill(~causal, -math.inf).softmax(-1)
    p_ref = (scores + ref).masked_fill(~causal, -math.inf).softmax(-1)
    torch.testing.assert_close(p_ours, p_ref, rtol=1e-5, atol=1e-6)
    # zero on the aligned diagonal, negative for past keys
    assert torch.all(ours[:, torch.arange(Tq), i[:, 0]] == 0)
    assert torch.all(ours.masked_select(causal & (torch.arange(Tk)[None, :] < i)) < 0)


def test_bias_device_dtype() -> None:
    b = alibi_bias(4, 2, 5, dtype=torch.bfloat16, device="cpu")
    assert b.dtype == torch.bfloat16 and b.device.type == "cpu"


@pytest.mark.parametrize("bad", [0, -3, 2.0])
def test_bad_n_heads(bad) -> None:
    with pytest.raises(ValueError, match="n_heads"):
        alibi_slopes(bad)
    with pytest.raises(ValueError, match="n_heads"):
        alibi_bias(bad, 2, 2)


def test_bad_lengths() -> None:
    with pytest.raises(ValueError, match="Tq"):
        alibi_bias(4, 0, 3)
    with pytest.raises(ValueError, match="Tq"):
        alibi_bias(4, 5, 3)


def test_left_padded_batch_matches_bloom() -> None:
    """With left padding BLOOM counts key positions from the first real token; under the padding + causal mask the
    attention probabilities equal those with our index-distance bias."""
    n_heads, T, pad = 6, 8, 3
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, :pad] = 0
    ref = build_alibi_tensor(mask, n_heads, torch.float32).view(2, n_heads, 1, T)
    ours = alibi_bias(n_heads, T, T)[None]  # (1, H, T, T)
    visible = torch.ones(T, T, dtype=torch.bool).tril()[None, None] & mask.bool()[:, None, None, :]
    scores = torch.randn(2, n_heads, T, T)
    p_ref = (scores + ref).masked_fill(~visible, -math.inf).softmax(-1)[1, :, pad:]  # real query rows only
    p_ours = (scores + ours).masked_fill(~visible, -math.inf).softmax(-1)[1, :, pad:]
    torch.testing.assert_close(p_ours, p_ref, rtol=1e-5, atol=1e-6)
