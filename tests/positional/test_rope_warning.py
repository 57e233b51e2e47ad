"""The RoPE ``factor < 1`` warning appears once per construction, not again on .to(), forward or rebuilds."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from mlcore.model import Transformer, TransformerConfig
from mlcore.positional import RotaryEmbedding, rope_inv_freq

SHRINK = {"rope_type": "dynamic", "factor": 0.5}


def _factor_warnings(fn) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # count every emission, not only the first per call site
        fn()
    return [w for w in caught if "compresses positions" in str(w.message)]


def test_construction_warns_exactly_once():
    built = []
    assert len(_factor_warnings(lambda: built.append(RotaryEmbedding(16, scaling=SHRINK,
                                                                     max_position_embeddings=8)))) == 1
    rope = built[0]
    q = torch.randn(1, 2, 12, 16)
    positions = torch.arange(12)[None]  # beyond max_position_embeddings: dynamic NTK rebuilds its frequencies
    assert _factor_warnings(lambda: rope.to(torch.bfloat16)) == []
    assert _factor_warnings(lambda: rope(q, positions)) == []


def test_model_construction_warns_once():
    cfg = TransformerConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=16,
                            rope_scaling={"rope_type": "linear", "factor": 0.5})
    assert len(_factor_warnings(lambda: Transformer(cfg))) == 1


def test_direct_call_still_warns_and_matches_transformers():
    caught = _factor_warnings(lambda: rope_inv_freq(16, scaling=SHRINK, max_position_embeddings=8))
    assert len(caught) == 1 and caught[0].filename == __file__  # points at the caller's line
    ours, _ = rope_inv_freq(16, scaling=SHRINK, max_position_embeddings=8, warn=False)
    hf_cfg = LlamaConfig(hidden_size=32, num_attention_heads=2, head_dim=16, max_position_embeddings=8,
                         rope_scaling=SHRINK)
    ref, _ = ROPE_INIT_FUNCTIONS["dynamic"](hf_cfg, None)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_bad_factor_is_still_an_error():
    with pytest.raises(ValueError, match="factor"):
        RotaryEmbedding(16, scaling={"rope_type": "linear", "factor": -1.0})
