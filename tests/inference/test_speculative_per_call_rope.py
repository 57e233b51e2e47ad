"""Speculative decoding on models whose RoPE frequencies depend on the call (dynamic NTK, LongRoPE).

The target scores ``[x_S, d_1..d_k]`` in one pass, but these scalings pick their frequencies from the longest
position of a call: a round reaching past ``original_max_position_embeddings`` (LongRoPE) or
``max_position_embeddings`` (dynamic NTK) must still give the rows transformers' greedy ``generate`` computes one
token at a time. Reference: transformers' ``generate(do_sample=False)`` on the same weights.
"""

from __future__ import annotations

import functools

import pytest
import torch
from transformers import GenerationConfig

from mlcore.inference import generate
from mlcore.inference.speculative import speculative_generate
from mlcore.model import Transformer

from ..model._model_testutils import left_padded_batch, llama_family
from ._gen_testutils import EXACT_KINDS

# head_dim 16: 8 rotary pairs. LongRoPE switches to its long factors past position 8; dynamic NTK grows its
# base past 16 positions. Prompts of 7 columns and 20 new tokens cross both within a round.
ROPES = {
    "longrope": dict(max_position_embeddings=64, rope_parameters={
        "rope_type": "longrope", "rope_theta": 500.0, "original_max_position_embeddings": 8, "factor": 8.0,
        "short_factor": [1.2, 1.9, 1.1, 1.8, 1.2, 1.3, 1.8, 1.9],
        "long_factor": [3.0, 2.9, 3.2, 2.9, 1.1, 3.8, 2.2, 1.3]}),
    "dynamic": dict(max_position_embeddings=16, rope_parameters={
        "rope_type": "dynamic", "rope_theta": 500.0, "factor": 2.0}),
}


@functools.cache
def _models(rope: str) -> tuple[torch.nn.Module, Transformer, Transformer]:
    """(transformers target, mlcore target, mlcore one-layer draft sharing the target's first layer)."""
    hf = llama_family("llama", seed=3, **ROPES[rope])
    hf.generation_config = GenerationConfig()
    draft_hf = llama_family("llama", seed=3, num_hidden_layers=1, **ROPES[rope])
    draft_hf.load_state_dict(hf.state_dict(), strict=False)  # a shallower copy: it agrees with the target often
    return hf, Transformer.from_hf(hf).eval(), Transformer.from_hf(draft_hf).eval()


def _hf_greedy(hf: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    config = GenerationConfig(max_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        return hf.generate(ids, attention_mask=mask, generation_config=config)


@pytest.mark.parametrize("cache", EXACT_KINDS)
@pytest.mark.parametrize("rope", sorted(ROPES))
def test_greedy_crossing_the_rope_switch_equals_transformers(rope: str, cache: str) -> None:
    hf, target, draft = _models(rope)
    ids, mask = left_padded_batch([7, 3, 5], 7, seed=4)
    expected = _hf_greedy(hf, ids, mask, 20)
    assert torch.equal(generate(target, ids, attention_mask=mask, max_new_tokens=20, cache=cache), expected)
    for k in (3, 5):  # rounds of 4 and 6 target columns, straddling the switch at different offsets
        out = speculative_generate(target, draft, ids, attention_mask=mask, max_new_tokens=20, num_draft_tokens=k,
                                   cache=cache)
        assert torch.equal(out, expected), (rope, cache, k)
