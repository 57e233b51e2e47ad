"""RoPE from per-forward tables (``rotary_tables`` + ``apply_rotary_tables``, the decode path) vs transformers'
``apply_rotary_pos_emb`` (Llama rotate-half, GPT-J interleaved) and bit for bit vs ``apply_rotary``."""

from __future__ import annotations

import pytest
import torch
from transformers.models.gptj.modeling_gptj import apply_rotary_pos_emb as gptj_apply
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as llama_apply

from mlcore.positional import RotaryEmbedding, apply_rotary
from mlcore.positional.rope import apply_rotary_tables, rotary_tables

B, H, T, D = 2, 3, 5, 16


def _positions() -> torch.Tensor:
    return torch.stack([torch.arange(T), torch.arange(T) + 97])  # row 1: after 97 cached tokens


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("partial", [1.0, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_tables_rotate_exactly_as_apply_rotary(interleaved: bool, partial: float, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    rope = RotaryEmbedding(D, interleaved=interleaved, partial_rotary_factor=partial)
    cos, sin = rope(_positions())
    x = (torch.randn(B, H, T, D) * 3).to(dtype)
    tables = rotary_tables(cos, sin, interleaved=interleaved, dtype=torch.promote_types(dtype, torch.float32))
    out = apply_rotary_tables(x, *tables, interleaved=interleaved)
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(out, apply_rotary(x, cos, sin, interleaved=interleaved))  # same roundings, not just close


def test_tables_match_llama_rotate_half() -> None:
    torch.manual_seed(1)
    cos, sin = RotaryEmbedding(D)(_positions())
    q, k = torch.randn(B, H, T, D), torch.randn(B, 1, T, D)
    ref_q, ref_k = llama_apply(q, k, cos, sin)
    tables = rotary_tables(cos, sin)
    torch.testing.assert_close(apply_rotary_tables(q, *tables), ref_q, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(apply_rotary_tables(k, *tables), ref_k, rtol=1e-6, atol=1e-6)


def test_tables_match_gptj_interleaved() -> None:
    torch.manual_seed(2)
    positions = _positions()
    cos, sin = RotaryEmbedding(D, interleaved=True)(positions)
    x = torch.randn(B, T, H, D)  # GPT-J rotates (B, T, H, D) with sin / cos of the D/2 pair angles (B, T, D/2)
    ref = gptj_apply(x, sin[..., ::2], cos[..., ::2])  # ours repeat each angle twice: [a0, a0, a1, a1, ...]
    ours = apply_rotary_tables(x.transpose(1, 2), *rotary_tables(cos, sin, interleaved=True), interleaved=True)
    torch.testing.assert_close(ours.transpose(1, 2), ref, rtol=1e-6, atol=1e-6)
