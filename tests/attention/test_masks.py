"""Masks against transformers' mask functions (masking_utils) and torch's own conventions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import masking_utils as mu

from mlcore.attention import causal_mask, combine_masks, padding_mask, sliding_window_mask


def _hf(mask_fn, Tq: int, Tk: int) -> torch.Tensor:
    """Evaluate a transformers mask function with absolute query positions (the last Tq of Tk, as with a cache)."""
    q_idx = torch.arange(Tk - Tq, Tk).view(Tq, 1)
    kv_idx = torch.arange(Tk).view(1, Tk)
    return mask_fn(0, 0, q_idx, kv_idx).expand(Tq, Tk)


@pytest.mark.parametrize(("Tq", "Tk"), [(1, 1), (5, 5), (3, 8), (1, 9)])
def test_causal_mask_matches_transformers_and_torch(Tq, Tk):
    m = causal_mask(Tq, Tk)
    assert m.dtype == torch.bool and m.shape == (Tq, Tk)
    assert torch.equal(m, _hf(mu.causal_mask_function, Tq, Tk))
    if Tq == Tk:  # torch's is_causal (top-left) agrees when the matrix is square
        q, k, v = (torch.randn(1, 1, Tq, 4) for _ in range(3))
        torch.testing.assert_close(
            F.scaled_dot_product_attention(q, k, v, attn_mask=m),
            F.scaled_dot_product_attention(q, k, v, is_causal=True),
        )


@pytest.mark.filterwarnings("ignore:Lower right causal bias")
@pytest.mark.parametrize(("Tq", "Tk"), [(3, 8), (6, 6), (7, 3), (5, 1)])
def test_causal_mask_equals_torch_causal_lower_right_and_is_causal(Tq, Tk):
    """Regression: Tq > Tk raised, though ``is_causal`` accepts it (the first Tq - Tk queries see no key)."""
    from torch.nn.attention.bias import causal_lower_right

    from mlcore.attention import scaled_dot_product_attention as sdpa

    m = causal_mask(Tq, Tk)
    assert torch.equal(m, causal_lower_right(Tq, Tk)._materialize())
    q, k, v = torch.randn(1, 2, Tq, 4), torch.randn(1, 2, Tk, 4), torch.randn(1, 2, Tk, 4)
    torch.testing.assert_close(sdpa(q, k, v, attn_mask=m), sdpa(q, k, v, is_causal=True))
    assert torch.equal(sliding_window_mask(Tq, Tk, window=Tq + Tk), m)


@pytest.mark.parametrize(("Tq", "Tk", "window"), [(6, 6, 1), (6, 6, 3), (4, 10, 3), (1, 10, 4), (5, 5, 50)])
def test_sliding_window_matches_transformers_mistral_rule(Tq, Tk, window):
    ours = sliding_window_mask(Tq, Tk, window=window)
    ref = _hf(mu.sliding_window_causal_mask_function(window), Tq, Tk)
    assert torch.equal(ours, ref)
    assert (ours.sum(-1) <= window).all()


def test_sliding_window_matches_hf_create_mask():
    """Mistral's full mask builder (sdpa path gives a bool 4-D mask, True = attend)."""
    from transformers import MistralConfig

    cfg = MistralConfig(
        hidden_size=16,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_hidden_layers=1,
        intermediate_size=32,
        vocab_size=10,
        sliding_window=3,
    )
    cfg._attn_implementation = "sdpa"
    T = 7
    am = torch.tensor([[1] * T, [0, 0] + [1] * (T - 2)])
    hf = mu.create_sliding_window_causal_mask(
        config=cfg,
        inputs_embeds=torch.zeros(2, T, 16),
        attention_mask=am,
        cache=None,
        position_ids=torch.arange(T)[None].expand(2, T),
    )
    if hf is None or hf.dtype != torch.bool:
        pytest.skip("this transformers version returns no bool mask here")
    ours = combine_masks(sliding_window_mask(T, window=3), padding_mask(am))
    assert torch.equal(ours.expand(2, 1, T, T), hf)


def test_padding_mask_from_attention_mask_and_lengths():
    am = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    m = padding_mask(am)
    assert m.shape == (2, 1, 1, 4) and m.dtype == torch.bool
    assert torch.equal(m[:, 0, 0], am.bool())
    assert torch.equal(padding_mask(lengths=torch.tensor([3, 2]), T=4), m)
    assert padding_mask(lengths=torch.tensor([3, 2]), T=6).shape == (2, 1, 1, 6)
    # Left padding works from an attention_mask; and the padding mask hides pad keys in torch's SDPA
    left = torch.tensor([[0, 1, 1], [1, 1, 1]])
    q, k, v = torch.randn(2, 2, 3, 4), torch.randn(2, 2, 3, 4), torch.randn(2, 2, 3, 4)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=padding_mask(left))
    ref0 = F.scaled_dot_product_attention(q[:1], k[:1, :, 1:], v[:1, :, 1:])
    torch.testing.assert_close(out[:1], ref0)


def test_combine_masks():
    a, b = causal_mask(4), padding_mask(lengths=torch.tensor([2, 4]))
    both = combine_masks(a, None, b)
    assert both.shape == (2, 1, 4, 4) and both.dtype == torch.bool
    assert torch.equal(both, a & b)
    bias = torch.randn(4, 4)
    add = combine_masks(a, bias)
    assert add.dtype == torch.float32
    torch.testing.assert_close(add[a], bias[a])
    assert torch.isneginf(add[~a]).all()
    assert combine_masks(None, None) is None


def test_bad_mask_arguments():
    with pytest.raises(ValueError, match="window"):
        sliding_window_mask(4, window=0)
    with pytest.raises(ValueError, match="Tk"):
        causal_mask(5, -1)
    with pytest.raises(ValueError, match="exactly one"):
        padding_mask()
    with pytest.raises(ValueError, match="attention_mask"):
        padding_mask(torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match="lengths"):
        padding_mask(lengths=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"masks\[1\]"):
        combine_masks(causal_mask(2), torch.ones(2, 2, dtype=torch.int64))


@pytest.mark.parametrize(("kw", "named"), [
    (dict(lengths=torch.tensor([], dtype=torch.long)), "lengths"),
    (dict(lengths=torch.tensor([True, False])), "lengths"),
    (dict(lengths=torch.tensor([2, 1]), T=2.5), "T must"),
    (dict(lengths=torch.tensor([2, 1]), T=-1), "T must"),
])
def test_padding_mask_lengths_edge_cases_are_named(kw, named):
    with pytest.raises(ValueError, match=named):
        padding_mask(**kw)


def test_padding_mask_T_and_combine_masks_devices_are_named():
    """``padding_mask(am, T="3")`` said "attention_mask has T=3, but T=3 was given"; masks on two devices failed
    inside torch's ``&``. Both name the argument now; a matching int T is still accepted."""
    am = torch.ones(2, 3, dtype=torch.long)
    for bad in ("3", 3.0, True, -1):
        with pytest.raises(ValueError, match="T must be an int"):
            padding_mask(am, T=bad)
    assert padding_mask(am, T=3).shape == (2, 1, 1, 3)
    on_meta = torch.ones(3, 3, dtype=torch.bool, device="meta")
    with pytest.raises(ValueError, match="one device"):
        combine_masks(causal_mask(3), on_meta)
