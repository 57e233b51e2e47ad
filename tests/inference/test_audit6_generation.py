"""Sixth parity audit of generation against transformers 5.25's ``generate`` (and its logits processors).

References, all run here on the same weights:
- greedy tokens: ``model.generate(do_sample=False)`` with transformers' DynamicCache and StaticCache, for a Qwen2
  whose ``layer_types`` mix sliding and full attention (window 3, shorter than prompt + output), left-padded rows
  of very unequal lengths, every mlcore cache kind;
- the processed next-token distribution (repetition penalty over left-padded rows whose pad id is a real token,
  then temperature / top-k / top-p): transformers' own probabilities, recorded where it draws and forced onto
  mlcore's tokens, so both are compared on one history;
- ``stop``: transformers' ``StopStringCriteria`` on a one-character-per-token tokenizer, for stops that lie in the
  output (a stop that starts inside the prompt ends nothing in mlcore, as its docstring says; transformers
  matches it across the boundary);
- speculative decoding: the target's own greedy tokens and transformers' greedy ``generate``; its sampled
  continuations against the exact distribution enumerated from transformers' model and warpers.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import string

import pytest
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from mlcore.inference import DynamicCache, PagedCache, StaticCache, generate, speculative_generate
from mlcore.inference import sampling as sampling_module
from mlcore.inference.quantized_cache import QuantizedCache
from mlcore.inference.sliding_cache import SlidingWindowCache
from mlcore.model import Transformer

from ..model._model_testutils import llama_family
from ._gen_testutils import CACHE_KINDS, EXACT_KINDS

MIXED_TYPES = ["sliding_attention", "full_attention", "sliding_attention"]


@functools.cache
def mixed_pair(vocab: int = 128, seed: int = 0) -> tuple[torch.nn.Module, Transformer]:
    """A 3-layer Qwen2 sliding only layers 0 and 2 (window 3), and its mlcore twin."""
    hf = llama_family("qwen2", seed=seed, num_hidden_layers=3, use_sliding_window=True, sliding_window=3,
                      layer_types=MIXED_TYPES, max_window_layers=3, vocab_size=vocab)
    return hf, Transformer.from_hf(hf).eval()


def unequal_batch(vocab: int = 128, pad: int = 0, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Four left-padded rows holding 1, 14, 2 and 9 tokens of 14 columns; pads hold ``pad`` (a real token id)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (4, 14), generator=g)
    mask = torch.zeros(4, 14, dtype=torch.long)
    for row, n in enumerate([1, 14, 2, 9]):
        mask[row, 14 - n:] = 1
        ids[row, :14 - n] = pad
    return ids, mask


def hf_greedy(hf: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor | None, new: int, *, eos=(), pad: int = 0,
              cache: str = "dynamic", repetition_penalty: float = 1.0, **kwargs) -> torch.Tensor:
    """transformers' own greedy generate with an explicit config (nothing from the model's generation_config)."""
    config = GenerationConfig(max_new_tokens=new, do_sample=False, eos_token_id=list(eos), pad_token_id=pad,
                              cache_implementation=cache, repetition_penalty=repetition_penalty)
    own, hf.generation_config = hf.generation_config, GenerationConfig()
    try:
        with torch.no_grad():
            return hf.generate(ids, attention_mask=mask, generation_config=config, **kwargs)
    finally:
        hf.generation_config = own


# --- regressions ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1e-40, 1e-45])
def test_tiny_temperature_with_repetition_penalty_is_greedy(temperature: float) -> None:
    """Below GREEDY_BELOW ``generate`` is greedy (transformers' ``do_sample=False``: the penalty, then argmax). With
    a penalty it used to divide the logits by the temperature first: 1e-40 turned every positive logit into +inf
    and the argmax took the first of them (the tokens differed from transformers' in every row)."""
    hf, model = mixed_pair()
    ids, mask = unequal_batch()
    ref = hf_greedy(hf, ids, mask, 8, repetition_penalty=1.3)
    out = generate(model, ids, attention_mask=mask, max_new_tokens=8, repetition_penalty=1.3,
                   temperature=temperature, top_k=5, top_p=0.9)
    assert torch.equal(out, ref)


def test_empty_eos_list_means_no_eos() -> None:
    """transformers reads ``eos_token_id=[]`` (with a pad id) as "no EOS"; ``generate`` refused it by name."""
    hf, model = mixed_pair()
    ids, mask = unequal_batch()
    ref = hf_greedy(hf, ids, mask, 6, eos=[], pad=4)
    for empty in ([], (), torch.tensor([], dtype=torch.long)):
        assert torch.equal(generate(model, ids, attention_mask=mask, max_new_tokens=6, eos_token_id=empty,
                                    pad_token_id=4), ref)
    draft = mixed_pair(seed=1)[1]
    assert torch.equal(speculative_generate(model, draft, ids, attention_mask=mask, max_new_tokens=6,
                                            eos_token_id=[], pad_token_id=4), ref)


# --- mixed layer types, every cache kind ------------------------------------------------------------------------


@pytest.mark.parametrize("cache", CACHE_KINDS)
def test_mixed_layer_types_unequal_padding_equal_transformers(cache: str) -> None:
    hf, model = mixed_pair()
    ids, mask = unequal_batch()
    out = generate(model, ids, attention_mask=mask, max_new_tokens=20, cache=cache)
    if cache == "int8":  # int8 rounds the cached keys / values: each token is within 5 % of a std of the argmax
        full = torch.ones_like(out)
        full[:, :14] = mask
        with torch.no_grad():
            logits = hf(out, attention_mask=full, position_ids=(full.cumsum(-1) - 1).clamp(min=0)).logits[:, 13:-1]
        gap = logits.max(-1).values - logits.gather(-1, out[:, 14:, None])[..., 0]
        assert float((gap / logits.std(-1)).max()) < 0.05
        return
    assert torch.equal(out, hf_greedy(hf, ids, mask, 20, cache="dynamic"))
    assert torch.equal(out, hf_greedy(hf, ids, mask, 20, cache="static"))


def test_mixed_layer_types_window_matters() -> None:
    """Guard for the test above: with every layer full, the same weights continue differently."""
    hf, model = mixed_pair()
    ids, mask = unequal_batch()
    full = Transformer(dataclasses.replace(model.config, sliding_window=None, layer_types=None))
    full.load_state_dict(model.state_dict())
    assert not torch.equal(generate(full.eval(), ids, attention_mask=mask, max_new_tokens=20),
                           hf_greedy(hf, ids, mask, 20))


@pytest.mark.parametrize("cache", EXACT_KINDS)
def test_eos_list_in_prompt_pad_is_eos_rows_finish_apart(cache: str) -> None:
    """EOS given as a list whose ids also occur in the prompt, pad id = the second EOS id, rows ending at
    different steps (from transformers' own plain output) and padded after."""
    hf, model = mixed_pair()
    ids, mask = unequal_batch()
    plain = hf_greedy(hf, ids, mask, 12)[:, 14:]
    eos = [int(plain[0, 3]), int(plain[2, 7]), int(ids[1, -1])]
    ref = hf_greedy(hf, ids, mask, 12, eos=eos, pad=eos[1])
    finished_at = {next((i for i, t in enumerate(row) if t in eos), None) for row in ref[:, 14:].tolist()}
    assert len(finished_at) > 1
    assert torch.equal(generate(model, ids, attention_mask=mask, max_new_tokens=12, eos_token_id=eos,
                                pad_token_id=eos[1], cache=cache), ref)


# --- repetition penalty with sampling: the processed distributions --------------------------------------------


@pytest.mark.parametrize("options", [
    dict(temperature=0.7, repetition_penalty=1.3),
    dict(temperature=1.5, top_k=5, repetition_penalty=0.7),
    dict(temperature=1.0, top_p=0.8, repetition_penalty=2.0),
    dict(temperature=0.9, top_k=3, top_p=0.6, repetition_penalty=10.0),
])
@pytest.mark.parametrize("give_mask", [True, False])
def test_penalised_sampling_distribution_equals_transformers(monkeypatch: pytest.MonkeyPatch, options: dict,
                                                             give_mask: bool) -> None:
    """Left-padded rows whose pad id (5) is a real token that also occurs inside prompts: transformers leaves each
    row's leading pads out of the penalty and penalises the rest. Every step's probabilities of the rows still
    running must agree (1e-5), and the outputs (EOS, pads after it) must be the same tokens."""
    vocab, pad = 16, 5
    hf, model = mixed_pair(vocab=vocab, seed=2)
    ids, mask = unequal_batch(vocab, pad=pad, seed=4)
    ids[1, 3] = pad  # a real pad-id token inside a row's prompt
    eos = [3, 11]
    mine: list[torch.Tensor] = []
    real = torch.multinomial

    def record(probs, num_samples, generator=None, **kw):
        mine.append(probs.clone())
        return real(probs, num_samples, generator=generator, **kw)

    monkeypatch.setattr(sampling_module.torch, "multinomial", record)
    out = generate(model, ids, attention_mask=mask if give_mask else None, max_new_tokens=12, eos_token_id=eos,
                   pad_token_id=pad, seed=7, **options)
    monkeypatch.setattr(sampling_module.torch, "multinomial", real)

    theirs: list[torch.Tensor] = []

    def forced(probs, num_samples, **kw):  # record transformers' distribution, then take mlcore's token
        step = len(theirs)
        theirs.append(probs.clone())
        return out[:, 14 + step:15 + step].clone()

    config = GenerationConfig(max_new_tokens=12, do_sample=True, eos_token_id=eos, pad_token_id=pad,
                              temperature=options["temperature"], top_k=options.get("top_k", 0),
                              top_p=options.get("top_p", 1.0), repetition_penalty=options["repetition_penalty"])
    own, hf.generation_config = hf.generation_config, GenerationConfig()
    monkeypatch.setattr(torch, "multinomial", forced)
    try:
        with torch.no_grad():
            ref = hf.generate(ids, attention_mask=mask if give_mask else None, generation_config=config)
    finally:
        monkeypatch.setattr(torch, "multinomial", real)
        hf.generation_config = own
    assert torch.equal(out, ref)
    assert len(mine) == len(theirs) > 1
    running = torch.ones(4, dtype=torch.bool)
    for step, (p, q) in enumerate(zip(mine, theirs)):
        torch.testing.assert_close(p[running], q[running], rtol=0, atol=1e-5)
        assert torch.equal(p[running] > 0, q[running] > 0)  # the same tokens filtered out
        running &= ~torch.isin(out[:, 14 + step], torch.tensor(eos))


# --- stop sequences ----------------------------------------------------------------------------------------------


def _char_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = string.ascii_letters + string.digits + "!?.,;:-+*/=()[]{}<>@#"
    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token=chars[-1]))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok), chars


def test_stop_sequences_in_the_output_equal_stop_string_criteria() -> None:
    tokenizer, chars = _char_tokenizer()
    hf, model = mixed_pair(vocab=32, seed=5)
    ids, mask = unequal_batch(32, seed=6)
    plain = hf_greedy(hf, ids, mask, 12)[:, 14:].tolist()

    def spans_prompt(stop: list[int]) -> bool:  # would end a row where it starts inside the prompt
        n = len(stop)
        return any((ids[b, 14 - n + j:].tolist() + row[:j])[-n:] == stop for b, row in enumerate(plain)
                   for j in range(1, n))

    candidates = [row[a:a + n] for n in (2, 3) for row in plain for a in range(1, 12 - n)]
    stops = [s for s in candidates if not spans_prompt(s)][::7][:3]  # each ends some row inside its output
    assert len(stops) == 3
    config = GenerationConfig(max_new_tokens=12, do_sample=False, eos_token_id=[], pad_token_id=7,
                              stop_strings=["".join(chars[i] for i in s) for s in stops])
    own, hf.generation_config = hf.generation_config, GenerationConfig()
    try:
        with torch.no_grad():
            ref = hf.generate(ids, attention_mask=mask, generation_config=config, tokenizer=tokenizer)
    finally:
        hf.generation_config = own
    assert not torch.equal(ref[:, 14:], torch.tensor(plain)[:, :ref.shape[1] - 14])  # some row did stop
    assert torch.equal(generate(model, ids, attention_mask=mask, max_new_tokens=12, stop=stops, pad_token_id=7), ref)


def test_stop_sequence_starting_in_the_prompt_does_not_stop() -> None:
    """``stop`` matches the generated tokens only (the docstring's "its output ends with"; OpenAI's and vLLM's
    rule for stop strings). transformers' StopStringCriteria would also match ``[last prompt token, first new
    token]``."""
    _, model = mixed_pair()
    ids, mask = unequal_batch()
    plain = generate(model, ids, attention_mask=mask, max_new_tokens=6)
    across = [[int(ids[1, -1]), int(plain[1, 14])]]
    out = generate(model, ids, attention_mask=mask, max_new_tokens=6, stop=across, pad_token_id=0)
    assert torch.equal(out, plain)


# --- speculative decoding ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cache", CACHE_KINDS)
def test_speculative_greedy_mixed_target_padded_batch(cache: str) -> None:
    hf, target = mixed_pair()
    draft = Transformer.from_hf(llama_family("llama", seed=9, num_hidden_layers=1)).eval()
    ids, mask = unequal_batch()
    ref = hf_greedy(hf, ids, mask, 18)
    for k in (1, 3, 5):
        out = speculative_generate(target, draft, ids, attention_mask=mask, max_new_tokens=18, num_draft_tokens=k,
                                   cache=cache)
        if cache != "int8":  # int8 rounds both caches: its own rule is the test above
            assert torch.equal(out, ref)
        else:
            assert out.shape == ref.shape


def _exact_distribution(hf: torch.nn.Module, prompt: torch.Tensor, n: int, warpers: LogitsProcessorList,
                        vocab: int) -> dict[tuple[int, ...], float]:
    """P(continuation) for every continuation of n tokens, from transformers' logits and warpers."""
    dist: dict[tuple[int, ...], float] = {}
    for cont in itertools.product(range(vocab), repeat=n):
        p = 1.0
        for i in range(n):
            ids = torch.cat([prompt, torch.tensor([cont[:i]], dtype=torch.long)], dim=1)
            with torch.no_grad():
                logits = hf(ids).logits[:, -1]
            p *= float(warpers(ids, logits).softmax(-1)[0, cont[i]])
            if p == 0.0:
                break
        if p > 0:
            dist[cont] = p
    return dist


def test_speculative_sampling_distribution_equals_target() -> None:
    """Chi-square test of 24,000 two-token continuations (two prompts, one left-padded by 3, in one batch) against
    the distribution enumerated from transformers' target and its warpers. At alpha 1e-4 the test detects a total
    variation of 0.03 with power > 0.99 (noncentrality >= 4 N TV^2 = 43 on at most 8 degrees of freedom)."""
    from scipy.stats import chi2

    vocab = 5
    hf_t = llama_family("qwen2", seed=11, num_hidden_layers=2, use_sliding_window=True, sliding_window=2,
                        layer_types=["sliding_attention", "full_attention"], max_window_layers=2, vocab_size=vocab)
    hf_d = llama_family("llama", seed=12, num_hidden_layers=1, vocab_size=vocab)
    with torch.no_grad():  # flatter distributions, so that drafts get rejected and residuals drawn
        hf_t.lm_head.weight.mul_(0.05)
        hf_d.lm_head.weight.mul_(0.05)
    target, draft = Transformer.from_hf(hf_t).eval(), Transformer.from_hf(hf_d).eval()
    warpers = LogitsProcessorList([TemperatureLogitsWarper(0.8), TopKLogitsWarper(4), TopPLogitsWarper(0.9)])
    prompts = [torch.tensor([[1, 4, 0, 2, 3]]), torch.tensor([[2, 2]])]
    ids = torch.tensor([[1, 4, 0, 2, 3], [0, 0, 0, 2, 2]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 1, 1]])
    rows = 6000
    out = torch.cat([speculative_generate(target, draft, ids.repeat_interleave(rows, 0),
                                          attention_mask=mask.repeat_interleave(rows, 0), max_new_tokens=2,
                                          num_draft_tokens=2, temperature=0.8, top_k=4, top_p=0.9, seed=s)[:, 5:]
                     for s in range(2)])
    for which, prompt in enumerate(prompts):
        dist = _exact_distribution(hf_t, prompt, 2, warpers, vocab)
        drawn = out.view(2, 2, rows, 2)[:, which].reshape(-1, 2).tolist()
        counts: dict[tuple[int, ...], int] = {}
        for row in drawn:
            counts[tuple(row)] = counts.get(tuple(row), 0) + 1
        assert set(counts) <= set(dist)  # nothing the target's warpers exclude
        expected = [dist[c] * len(drawn) for c in dist]
        observed = [counts.get(c, 0) for c in dist]
        stat = sum((o - e) ** 2 / e for o, e in zip(observed, expected))
        assert chi2.sf(stat, len(dist) - 1) > 1e-4
        tv = 0.5 * sum(abs(counts.get(c, 0) / len(drawn) - p) for c, p in dist.items())
        assert tv < 0.03


# --- caches a user holds --------------------------------------------------------------------------------------


def _cache_object(kind: str, model: Transformer, batch: int, max_len: int):
    return {"dynamic": lambda: DynamicCache(), "static": lambda: StaticCache.for_model(model, batch, max_len),
            "paged": lambda: PagedCache.for_model(model, batch, max_len),
            "sliding": lambda: SlidingWindowCache.for_model(model, batch, max_len, rollback=4),
            "int8": lambda: QuantizedCache.for_model(model, batch, max_len)}[kind]()


@pytest.mark.parametrize("cache", CACHE_KINDS)
def test_cache_object_reused_across_generate_calls(cache: str) -> None:
    """A cache a caller passes holds prompt + new - 1 columns afterwards; a second call on it is refused (never a
    silent continuation from stale columns), also after a partial crop; after crop(0) it equals a fresh cache."""
    _, model = mixed_pair()
    ids, mask = unequal_batch()
    kv = _cache_object(cache, model, 4, 40)
    first = generate(model, ids, attention_mask=mask, max_new_tokens=9, cache=kv)
    assert torch.equal(first, generate(model, ids, attention_mask=mask, max_new_tokens=9, cache=cache))
    assert kv.get_seq_length() == 14 + 9 - 1
    other_ids, other_mask = unequal_batch(seed=8)
    other_ids, other_mask = other_ids[:, 4:], other_mask[:, 4:].clone()
    other_mask[:, -1] = 1
    with pytest.raises(ValueError, match="cache must be empty"):
        generate(model, other_ids, attention_mask=other_mask, max_new_tokens=5, cache=kv)
    kv.crop(20 if cache != "sliding" else 22)
    with pytest.raises(ValueError, match="cache must be empty"):
        generate(model, other_ids, attention_mask=other_mask, max_new_tokens=5, cache=kv)
    kv.crop(0)
    assert kv.get_seq_length() == 0
    again = generate(model, other_ids, attention_mask=other_mask, max_new_tokens=15, cache=kv)
    assert torch.equal(again, generate(model, other_ids, attention_mask=other_mask, max_new_tokens=15, cache=cache))


def test_transformers_cache_objects_are_refused_by_name() -> None:
    import transformers

    hf, model = mixed_pair()
    for cache in (transformers.DynamicCache(config=hf.config),
                  transformers.StaticCache(config=hf.config, max_cache_len=32)):
        with pytest.raises(ValueError, match="cache is a transformers"):
            generate(model, torch.tensor([[1, 2, 3]]), max_new_tokens=3, cache=cache)


def test_penalty_counts_pad_id_tokens_inside_the_prompt_greedy() -> None:
    """Greedy with a penalty: pad-id tokens that are prompt tokens are penalised, leading pads are not (transformers'
    ``prompt_ignore_length``), with and without a mask (then read from the pad id)."""
    cfg = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, vocab_size=16, max_position_embeddings=64)
    torch.manual_seed(0)
    hf = LlamaForCausalLM(cfg).eval()
    model = Transformer.from_hf(hf).eval()
    ids, mask = unequal_batch(16, pad=6, seed=2)
    ids[1, 5] = 6
    for given in (mask, None):
        ref = hf_greedy(hf, ids, given, 10, pad=6, repetition_penalty=5.0)
        assert torch.equal(generate(model, ids, attention_mask=given, max_new_tokens=10, pad_token_id=6,
                                    repetition_penalty=5.0), ref)


@pytest.mark.parametrize("cache", CACHE_KINDS)
def test_crop_takes_numpy_integers(cache: str) -> None:
    """``crop(np.int64(n))`` (a length computed with numpy) was refused as "not an int"; transformers' caches take
    it. It crops as ``crop(n)`` does; a bool or a float is still refused by name."""
    import numpy as np

    _, model = mixed_pair()
    ids, mask = unequal_batch()
    kv = _cache_object(cache, model, 4, 40)
    generate(model, ids, attention_mask=mask, max_new_tokens=6, cache=kv)
    kv.crop(np.int64(18))
    assert kv.get_seq_length() == 18
    kv.crop(np.int32(-1))
    assert kv.get_seq_length() == 17
    for bad in (True, 2.0):
        with pytest.raises(ValueError, match="crop takes an int"):
            kv.crop(bad)
    kv.crop(np.int64(0))
    assert kv.get_seq_length() == 0
