"""The engine on every position scheme: outputs equal ``generate`` per request, and RoPE whose frequencies depend on
a forward's longest position (dynamic NTK, LongRoPE) is refused where the model can reach that point.

Reference: ``mlcore.inference.generate`` on each request alone (greedy)."""

from __future__ import annotations

import pytest
import torch

from mlcore.inference import generate
from mlcore.model import Transformer, TransformerConfig
from mlcore.serve import Engine, EngineConfig, SamplingParams

LONGROPE = {"rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [3.0, 4.0, 5.0, 6.0],
            "original_max_position_embeddings": 16}


def model(seed: int = 0, **kw) -> Transformer:
    # initializer_range 0.4: a random model whose greedy tokens depend on its positions (0.02 gives one token)
    config = TransformerConfig(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                               initializer_range=0.4, **{"max_seq_len": 64, **kw})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Transformer(config).eval()


def served_and_solo(m: Transformer, **engine_kw) -> tuple[list[list[int]], list[list[int]]]:
    gen = torch.Generator().manual_seed(7)
    prompts = [torch.randint(0, 61, (n,), generator=gen).tolist() for n in (3, 29, 11, 20, 7)]
    engine = Engine(m, EngineConfig(num_blocks=64, block_size=4, max_step_tokens=16, **engine_kw))
    seqs = [engine.submit(p, SamplingParams(max_tokens=24)) for p in prompts]
    engine.run_until_done()
    solo = [generate(m, torch.tensor([p]), max_new_tokens=24)[0, len(p):].tolist() for p in prompts]
    return [s.output for s in seqs], solo


@pytest.mark.parametrize("kw", [
    {"position": "alibi"},
    {"position": "learned"},
    {"sliding_window": 5, "layer_types": ["sliding_attention", "full_attention"]},
    {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}},
    {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}, "rope_max_position_embeddings": 64},  # never rescales
    {"rope_scaling": LONGROPE, "max_seq_len": 16, "rope_max_position_embeddings": 64},  # never reaches long factors
], ids=["alibi", "learned", "mixed-sliding", "yarn", "dynamic-within", "longrope-within"])
def test_served_tokens_equal_generate_on_every_position_scheme(kw):
    if kw.get("max_seq_len") == 16:  # prompts + 24 tokens do not fit 16 positions: shorter requests
        m = model(**kw)
        engine = Engine(m, EngineConfig(num_blocks=32, block_size=4, max_step_tokens=8))
        prompts = [[1, 2, 3], [5, 8, 13, 21, 34, 55, 2]]
        seqs = [engine.submit(p, SamplingParams(max_tokens=16 - len(p))) for p in prompts]
        engine.run_until_done()
        assert [s.output for s in seqs] == [generate(m, torch.tensor([p]), max_new_tokens=16 - len(p))[0, len(p):]
                                            .tolist() for p in prompts]
        return
    served, solo = served_and_solo(model(**kw), prefix_caching=True)
    assert served == solo


@pytest.mark.parametrize("kw, switch", [
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 4.0}, "rope_max_position_embeddings": 16}, 16),
    ({"rope_scaling": LONGROPE, "rope_max_position_embeddings": 64}, 16),
], ids=["dynamic", "longrope"])
def test_position_dependent_rope_is_refused_by_name(kw, switch):
    m = model(**kw)
    # what the refusal prevents: batched, chunked serving would not give generate's tokens
    with pytest.raises(ValueError, match=rf"rope_type='{kw['rope_scaling']['rope_type']}' past position {switch}"):
        Engine(m, EngineConfig(num_blocks=64, block_size=4))


def test_engine_refuses_a_model_that_is_not_an_mlcore_transformer():
    with pytest.raises(ValueError, match="mlcore Transformer, got Linear"):
        Engine(torch.nn.Linear(2, 2))
