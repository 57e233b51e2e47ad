"""The HF path (``mlcore.inference.hf``): transformers' ``generate`` and assisted generation, wrapped so their
arguments mean what mlcore's mean.

References: a direct ``model.generate(do_sample=False)`` call; transformers' assisted generation against its
own greedy output and against mlcore's ``speculative_generate`` on the trained pair (``model.to_hf()``);
the global RNG state before and after a seeded sampling call.
"""

from __future__ import annotations

import functools

import pytest
import torch

from mlcore.inference import generate
from mlcore.inference.hf import hf_assisted_generate, hf_generate, hf_generation_config
from mlcore.inference.speculative import speculative_generate
from mlcore.model import Transformer

from ..model._model_testutils import llama_family
from ._gen_testutils import PROMPT_LEN, batch, pair

NEW = 12


def test_wrapper_equals_a_direct_generate_call() -> None:
    hf, _ = pair("llama")
    ids, mask = batch("padded")
    direct = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW, pad_token_id=0)
    assert hf.generation_config.eos_token_id not in direct[:, PROMPT_LEN:]  # so the model's EOS never stopped it
    for cache in ("dynamic", "static"):
        out = hf_generate(hf, ids, attention_mask=mask, max_new_tokens=NEW, cache_implementation=cache)
        torch.testing.assert_close(out, direct, rtol=0, atol=0)


def test_no_eos_means_none_even_when_the_model_config_has_one() -> None:
    hf, model = pair("gpt2")
    ids, mask = batch("single")
    free = hf_generate(hf, ids, attention_mask=mask, max_new_tokens=NEW)
    eos = free[0, PROMPT_LEN + 2].item()
    saved = hf.generation_config.eos_token_id
    hf.generation_config.eos_token_id = eos
    try:
        direct = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW, pad_token_id=0)
        wrapped = hf_generate(hf, ids, attention_mask=mask, max_new_tokens=NEW)
    finally:
        hf.generation_config.eos_token_id = saved
    stop_at = free[0, PROMPT_LEN:].tolist().index(eos) + 1
    assert direct.shape[1] == PROMPT_LEN + stop_at < free.shape[1]  # transformers alone stops at the config's EOS
    torch.testing.assert_close(wrapped, free, rtol=0, atol=0)  # the wrapper, like mlcore, does not
    torch.testing.assert_close(wrapped, generate(model, ids, attention_mask=mask, max_new_tokens=NEW), rtol=0, atol=0)


def test_generation_config_is_explicit() -> None:
    greedy = hf_generation_config(max_new_tokens=5, cache_implementation="static")
    assert (greedy.do_sample, greedy.cache_implementation, greedy.eos_token_id) == (False, "static", [])
    sampled = hf_generation_config(max_new_tokens=5, temperature=0.7, top_p=0.9, repetition_penalty=1.2)
    assert (sampled.do_sample, sampled.temperature, sampled.top_k, sampled.top_p) == (True, 0.7, 0, 0.9)
    assert sampled.repetition_penalty == 1.2


def _sample(seed: int | None, **kw) -> torch.Tensor:
    hf, _ = pair("llama")
    ids, mask = batch("padded")
    return hf_generate(hf, ids, attention_mask=mask, max_new_tokens=NEW, temperature=1.5, top_k=3, seed=seed, **kw)


def test_seeded_sampling_reproduces_and_restores_the_global_rng() -> None:
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = _sample(4)
    assert torch.equal(state, torch.get_rng_state())
    torch.manual_seed(99)
    torch.testing.assert_close(a, _sample(4), rtol=0, atol=0)
    assert not torch.equal(a, _sample(5))
    # top_k=3 reached transformers: every token lies in the model's top 3 at its step
    hf, _ = pair("llama")
    _, mask = batch("padded")
    full = torch.cat([mask, torch.ones(3, NEW, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        logits = hf(a, attention_mask=full, position_ids=(full.cumsum(-1) - 1).clamp(min=0)).logits
    logits = logits[:, PROMPT_LEN - 1:-1]
    chosen = logits.gather(-1, a[:, PROMPT_LEN:, None]).squeeze(-1)
    assert bool((chosen >= logits.topk(3, dim=-1).values[..., -1] - 1e-4).all())


@functools.cache
def _trained_hf() -> tuple:
    from mlcore.training import load_tiny

    target, tok = load_tiny("target")
    draft, _ = load_tiny("draft")
    return target, draft, target.to_hf().eval(), draft.to_hf().eval(), tok


@pytest.mark.parametrize("k", [2, 4])
def test_assisted_generation_equals_greedy_and_mlcore_speculative(k: int) -> None:
    target, draft, hf_target, hf_draft, tok = _trained_hf()
    ids = torch.tensor([tok.encode("Exceptions are raised when")])
    config_before = hf_draft.generation_config
    assisted = hf_assisted_generate(hf_target, hf_draft, ids, max_new_tokens=16, num_draft_tokens=k)
    assert hf_draft.generation_config is config_before  # the lent config was handed back
    torch.testing.assert_close(assisted, hf_generate(hf_target, ids, max_new_tokens=16), rtol=0, atol=0)
    mine = speculative_generate(target, draft, ids, max_new_tokens=16, num_draft_tokens=k)
    torch.testing.assert_close(mine, assisted, rtol=0, atol=0)


def test_assisted_generation_on_random_models() -> None:
    hf_target = llama_family("llama", seed=0)
    hf_draft = llama_family("llama", seed=5, num_hidden_layers=1)
    ids, _ = batch("single")
    assisted = hf_assisted_generate(hf_target, hf_draft, ids, max_new_tokens=NEW, num_draft_tokens=3)
    mine = speculative_generate(Transformer.from_hf(hf_target).eval(), Transformer.from_hf(hf_draft).eval(), ids,
                                max_new_tokens=NEW, num_draft_tokens=3)
    torch.testing.assert_close(mine, assisted, rtol=0, atol=0)


@pytest.mark.parametrize(("kw", "named"), [
    (dict(cache_implementation="paged"), "cache_implementation"),
    (dict(top_p=0.0, temperature=1.0), "top_p"),
    (dict(top_k=0, temperature=1.0), "top_k"),
    (dict(temperature=-1.0), "temperature"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(attention_mask=torch.ones(3, 4, dtype=torch.long)), "attention_mask"),
    (dict(input_ids=torch.zeros(1, 0, dtype=torch.long)), "input_ids"),
    (dict(seed="1", temperature=1.0), "seed"),
])
def test_hf_generate_bad_input(kw: dict, named: str) -> None:
    hf, _ = pair("llama")
    ids, mask = batch("padded")
    args = {"input_ids": ids, "attention_mask": mask, "max_new_tokens": 4, **kw}
    with pytest.raises(ValueError, match=named):
        hf_generate(hf, args.pop("input_ids"), **args)


def test_assisted_generation_bad_input() -> None:
    hf_target, _ = pair("llama")
    ids, mask = batch("padded")
    with pytest.raises(ValueError, match="input_ids must hold one row"):
        hf_assisted_generate(hf_target, hf_target, ids, attention_mask=mask, max_new_tokens=4)
    other_vocab = llama_family("llama", seed=2, vocab_size=100)
    with pytest.raises(ValueError, match=r"hf_draft has vocab_size=100"):
        hf_assisted_generate(hf_target, other_vocab, ids[:1], max_new_tokens=4)
    with pytest.raises(ValueError, match="num_draft_tokens"):
        hf_assisted_generate(hf_target, hf_target, ids[:1], max_new_tokens=4, num_draft_tokens=0)


def test_a_temperature_below_greedy_below_is_greedy_there_too() -> None:
    """generate decodes greedily below GREEDY_BELOW (1e-5); hf_generate sampled in transformers at
    temperature=1e-300 (logits / T overflowed: "probability tensor contains inf"). Both are argmax now; a
    numpy seed is taken, as generate takes it."""
    import numpy as np

    hf, model = pair("llama")
    ids, mask = batch("padded")
    greedy = hf_generate(hf, ids, attention_mask=mask, max_new_tokens=NEW)
    for t in (1e-300, 1e-6):
        assert hf_generation_config(max_new_tokens=NEW, temperature=t).do_sample is False
        out = hf_generate(hf, ids, attention_mask=mask, max_new_tokens=NEW, temperature=t, seed=np.int64(3))
        torch.testing.assert_close(out, greedy, rtol=0, atol=0)
        torch.testing.assert_close(generate(model, ids, attention_mask=mask, max_new_tokens=NEW, temperature=t),
                                   greedy, rtol=0, atol=0)


def test_a_padded_row_with_eos_and_numpy_draft_length_equals_assisted_generation() -> None:
    """A left-padded row that stops at EOS mid-round, against transformers' assisted generation; a numpy
    num_draft_tokens is taken (it was refused as "must be an int >= 1, got np.int64(3)", unlike max_new_tokens)."""
    import numpy as np

    hf_target = llama_family("qwen2", seed=31)
    hf_draft = llama_family("llama", seed=41, num_hidden_layers=1)
    target, draft = Transformer.from_hf(hf_target).eval(), Transformer.from_hf(hf_draft).eval()
    ids, mask = batch("padded")
    ids, mask = ids[:1], mask[:1]  # 4 tokens after 5 pads
    eos = int(generate(target, ids, attention_mask=mask, max_new_tokens=NEW)[0, PROMPT_LEN + 5])
    kw = dict(attention_mask=mask, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=127)
    assisted = hf_assisted_generate(hf_target, hf_draft, ids, num_draft_tokens=np.int64(3), **kw)
    mine = speculative_generate(target, draft, ids, num_draft_tokens=np.int64(3), **kw)
    torch.testing.assert_close(mine, assisted, rtol=0, atol=0)
    torch.testing.assert_close(mine, hf_generate(hf_target, ids, **kw), rtol=0, atol=0)
    assert mine[0, -1].item() == eos or mine.shape[1] == PROMPT_LEN + NEW


def test_nothing_leaks_in_from_the_models_own_generation_config() -> None:
    """transformers 5 fills every field of the passed GenerationConfig left None from ``model.generation_config``:
    a checkpoint's no_repeat_ngram_size / suppress_tokens / min_p / return_dict_in_generate changed hf_generate's
    tokens (or its return type) although the docstring promises only the given knobs apply."""
    import copy

    hf, model = pair("llama")
    ids, mask = batch("padded")
    greedy = generate(model, ids, attention_mask=mask, max_new_tokens=NEW)
    sampled = hf_generate(hf, ids, attention_mask=mask, max_new_tokens=NEW, temperature=1.0, seed=0)
    own = hf.generation_config
    lent = copy.deepcopy(own)
    lent.no_repeat_ngram_size, lent.min_p, lent.return_dict_in_generate = 1, 0.9, True
    lent.suppress_tokens = greedy[:, PROMPT_LEN].tolist()
    hf.generation_config = lent
    try:
        out = hf_generate(hf, ids, attention_mask=mask, max_new_tokens=NEW)
        torch.testing.assert_close(out, greedy, rtol=0, atol=0)
        again = hf_generate(hf, ids, attention_mask=mask, max_new_tokens=NEW, temperature=1.0, seed=0)
        torch.testing.assert_close(again, sampled, rtol=0, atol=0)
        assisted = hf_assisted_generate(hf, copy.deepcopy(hf), ids[1:2], max_new_tokens=NEW, num_draft_tokens=3)
        torch.testing.assert_close(assisted, greedy[1:2], rtol=0, atol=0)  # row 1: no padding
        assert hf.generation_config is lent  # handed back after each call
    finally:
        hf.generation_config = own
