"""Sampling knobs against transformers' own logits processors, plus properties of the draw itself.

References: ``RepetitionPenaltyLogitsProcessor``, ``TemperatureLogitsWarper``, ``TopKLogitsWarper``,
``TopPLogitsWarper`` and the processor list ``GenerationMixin._get_logits_processor`` builds for ``generate``.
Outputs are compared with ``torch.equal`` (bit for bit, ``-inf`` included).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from transformers import (
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from mlcore.inference.sampling import (
    make_generator,
    presence_mask,
    process_logits,
    sample_next,
    validate_sampling_args,
)


def _logits(seed: int, B: int, V: int, ties: bool) -> torch.Tensor:
    """Random logits; with ``ties`` drawn from a few integers so equal values are common."""
    g = torch.Generator().manual_seed(seed)
    if ties:
        return torch.randint(-3, 4, (B, V), generator=g).float()
    return torch.randn(B, V, generator=g) * 3


def _left_padded(seed: int, B: int, T: int, V: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (B, T) with random left padding (pad id 0, also a real token id) and their mask (B, T)."""
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, V, (B, T), generator=g)
    n_pad = torch.randint(0, T, (B,), generator=g)
    mask = (torch.arange(T)[None, :] >= n_pad[:, None]).long()
    return ids.masked_fill(mask == 0, 0), mask


shapes = dict(seed=st.integers(0, 10_000), B=st.integers(1, 4), V=st.integers(1, 40), ties=st.booleans())


@settings(max_examples=40, deadline=None)
@given(**shapes, T=st.integers(1, 12), penalty=st.floats(0.05, 5.0))
def test_repetition_penalty_matches_transformers_with_left_padding(seed, B, V, ties, T, penalty):
    logits = _logits(seed, B, V, ties)
    ids, mask = _left_padded(seed, B, T, V)
    n_pad = (mask != 0).int().argmax(dim=1)  # what generate passes as prompt_ignore_length
    ref = RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=n_pad)(ids, logits.clone())
    ours = process_logits(logits, repetition_penalty=penalty, prev_ids=ids, prev_mask=mask)
    assert torch.equal(ours, ref)
    # Without a mask every position counts, as transformers without prompt_ignore_length.
    ref_all = RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone())
    assert torch.equal(process_logits(logits, repetition_penalty=penalty, prev_ids=ids), ref_all)


@settings(max_examples=30, deadline=None)
@given(**shapes, temperature=st.floats(0.05, 5.0))
def test_temperature_matches_transformers(seed, B, V, ties, temperature):
    logits = _logits(seed, B, V, ties)
    ref = TemperatureLogitsWarper(temperature)(None, logits.clone())
    assert torch.equal(process_logits(logits, temperature=temperature), ref)


@settings(max_examples=40, deadline=None)
@given(**shapes, top_k=st.integers(1, 50))
def test_top_k_matches_transformers_including_ties(seed, B, V, ties, top_k):
    logits = _logits(seed, B, V, ties)
    ref = TopKLogitsWarper(top_k)(None, logits.clone())
    assert torch.equal(process_logits(logits, top_k=top_k), ref)


@settings(max_examples=50, deadline=None)
@given(**shapes, top_p=st.floats(0.01, 0.999))
def test_top_p_matches_transformers_including_ties(seed, B, V, ties, top_p):
    logits = _logits(seed, B, V, ties)
    ref = TopPLogitsWarper(top_p)(None, logits.clone())
    assert torch.equal(process_logits(logits, top_p=top_p), ref)


@pytest.fixture(scope="module")
def hf_processors():
    """The processor list transformers' generate builds, from a tiny GPT-2 (its class order is the reference)."""
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=1, n_embd=8, vocab_size=32, n_positions=16, bos_token_id=0, eos_token_id=0))

    def build(mask, **knobs):
        cfg = GenerationConfig(do_sample=True, **knobs)
        return model._get_logits_processor(
            generation_config=cfg, input_ids_seq_length=mask.shape[1], device="cpu",
            model_kwargs={"attention_mask": mask},
        )

    return build


@settings(max_examples=30, deadline=None)
@given(
    **shapes, T=st.integers(1, 10), temperature=st.floats(0.2, 3.0), top_k=st.integers(1, 30),
    top_p=st.floats(0.05, 0.99), penalty=st.floats(0.3, 3.0),
)
def test_full_chain_matches_generates_processor_list(hf_processors, seed, B, V, ties, T, temperature, top_k, top_p,
                                                    penalty):
    logits = _logits(seed, B, V, ties)
    ids, mask = _left_padded(seed, B, T, V)
    processors = hf_processors(mask, temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=penalty)
    names = [type(p).__name__ for p in processors]
    order = [("RepetitionPenaltyLogitsProcessor", penalty != 1.0), ("TemperatureLogitsWarper", temperature != 1.0),
             ("TopKLogitsWarper", True), ("TopPLogitsWarper", True)]  # generate skips the neutral values
    assert names == [name for name, used in order if used], names
    ref = processors(ids, logits.clone())
    ours = process_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=penalty,
                          prev_ids=ids, prev_mask=mask)
    assert torch.equal(ours, ref)


def test_processor_order_matters_so_the_chain_test_can_fail():
    """Top-p before temperature keeps a different set than after: the order check above is not vacuous."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    temp_first = LogitsProcessorList([TemperatureLogitsWarper(3.0), TopPLogitsWarper(0.7)])(None, logits.clone())
    top_p_first = LogitsProcessorList([TopPLogitsWarper(0.7), TemperatureLogitsWarper(3.0)])(None, logits.clone())
    assert torch.equal(process_logits(logits, temperature=3.0, top_p=0.7), temp_first)
    assert not torch.equal(temp_first.isinf(), top_p_first.isinf())


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), V=st.integers(2, 30), ties=st.booleans(),
       top_k=st.one_of(st.none(), st.integers(1, 10)), top_p=st.one_of(st.none(), st.floats(0.05, 0.95)))
def test_draws_never_leave_the_kept_set(seed, V, ties, top_k, top_p):
    """2000 seeded draws per case; the kept set is also checked against the definitions directly."""
    logits = _logits(seed, 1, V, ties)
    out = process_logits(logits, top_k=top_k, top_p=top_p)
    kept = ~out[0].isinf()
    if top_k is not None:  # everything >= the k-th largest logit, nothing else
        kth = logits[0].sort(descending=True).values[min(top_k, V) - 1]
        assert torch.equal(kept & (logits[0] >= kth), kept) and (top_p is not None or kept.sum() >= min(top_k, V))
    if top_p is not None:  # the nucleus holds >= top_p of the (top-k filtered) mass, minus the rounding slack
        probs = (logits if top_k is None else process_logits(logits, top_k=top_k))[0].softmax(-1)
        assert probs[kept].sum() >= top_p - 1e-6
    draws = sample_next(out.expand(2000, V), generator=make_generator(seed))
    assert kept[draws].all(), "a filtered token was drawn"


def test_sample_next_frequencies_follow_softmax():
    """Chi-square of 20000 draws against softmax(logits) (V = 6): p-value must not be tiny."""
    logits = torch.tensor([[1.0, 0.5, 0.0, -0.5, -1.0, 2.0]])
    draws = sample_next(logits.expand(20_000, 6), generator=make_generator(7))
    counts = torch.bincount(draws, minlength=6).double()
    expected = logits[0].double().softmax(-1) * counts.sum()
    assert stats.chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-3
    biased = sample_next((logits + torch.tensor([0.1, 0, 0, 0, 0, 0])).expand(20_000, 6), generator=make_generator(7))
    counts_b = torch.bincount(biased, minlength=6).double()
    assert stats.chisquare(counts_b.numpy(), expected.numpy()).pvalue < 1e-3  # the test can fail


def test_seeded_draws_are_reproducible_and_ignore_the_global_rng():
    logits = torch.randn(8, 50)
    torch.manual_seed(1)
    a = sample_next(logits, generator=make_generator(123))
    torch.manual_seed(2)  # a different global state changes nothing
    state = torch.get_rng_state()
    b = sample_next(logits, generator=make_generator(123))
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG was advanced"
    c = sample_next(logits, generator=make_generator(124))
    assert not torch.equal(a, c)
    sample_next(logits, generator=None)  # unseeded: a local generator, still not the global one
    assert torch.equal(torch.get_rng_state(), state)


def test_greedy_is_argmax_and_returns_long():
    logits = torch.randn(5, 17)
    out = sample_next(logits, generator=None, greedy=True)
    assert out.dtype == torch.long and out.shape == (5,)
    assert torch.equal(out, logits.argmax(-1))


def test_temperature_zero_applies_only_the_repetition_penalty():
    logits, ids = torch.randn(3, 10), torch.randint(0, 10, (3, 4))
    ref = RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone())
    assert torch.equal(process_logits(logits, temperature=0.0, top_k=2, top_p=0.5, repetition_penalty=1.3,
                                      prev_ids=ids), ref)


def test_half_precision_logits_are_promoted_like_generate():
    logits = torch.randn(2, 30).bfloat16()
    out = process_logits(logits, temperature=0.7, top_k=5)
    assert out.dtype == torch.float32
    assert torch.equal(out, TopKLogitsWarper(5)(None, TemperatureLogitsWarper(0.7)(None, logits.float())))


def test_presence_mask_updated_incrementally_equals_a_rescan():
    ids, mask = _left_padded(3, 4, 6, 20)
    present = presence_mask(ids, 20, mask)
    new = torch.randint(0, 20, (4, 3))
    for t in range(3):
        present.scatter_(1, new[:, t : t + 1], True)
    full = presence_mask(torch.cat([ids, new], 1), 20, torch.cat([mask, torch.ones_like(new)], 1))
    assert torch.equal(present, full)
    logits = torch.randn(4, 20)
    assert torch.equal(process_logits(logits, repetition_penalty=1.5, present=present),
                       process_logits(logits, repetition_penalty=1.5, prev_ids=torch.cat([ids, new], 1),
                                      prev_mask=torch.cat([mask, torch.ones_like(new)], 1)))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(temperature=-0.1), "temperature"), (dict(temperature="1"), "temperature"),
        (dict(temperature=float("nan")), "temperature"), (dict(top_k=0), "top_k"), (dict(top_k=2.0), "top_k"),
        (dict(top_k=True), "top_k"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
        (dict(top_p=float("nan")), "top_p"), (dict(top_p="0.9"), "top_p"), (dict(repetition_penalty=0.0),
                                                                           "repetition_penalty"),
        (dict(repetition_penalty=-1.0), "repetition_penalty"), (dict(repetition_penalty=None, top_k=None), None),
    ],
)
def test_validate_sampling_args_names_the_argument(kwargs, name):
    if name is None:
        validate_sampling_args(**kwargs)
        return
    with pytest.raises(ValueError, match=name):
        validate_sampling_args(**kwargs)
    with pytest.raises(ValueError, match=name):
        process_logits(torch.zeros(1, 3), **kwargs)


def test_bad_tensors_are_refused_clearly():
    with pytest.raises(ValueError, match="logits"):
        process_logits(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="logits"):
        sample_next(torch.zeros(2, 3, dtype=torch.long), generator=None)
    with pytest.raises(ValueError, match="prev_ids"):
        process_logits(torch.zeros(2, 5), repetition_penalty=1.2)
    with pytest.raises(ValueError, match="prev_ids"):
        process_logits(torch.zeros(2, 5), repetition_penalty=1.2, prev_ids=torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="prev_mask"):
        process_logits(torch.zeros(2, 5), repetition_penalty=1.2, prev_ids=torch.zeros(2, 4, dtype=torch.long),
                       prev_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="seed"):
        make_generator("1")


@pytest.mark.cuda
def test_cuda_matches_cpu_and_uses_a_cuda_generator():
    logits, ids = torch.randn(4, 64), torch.randint(0, 64, (4, 9))
    knobs = dict(temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.2)
    cpu = process_logits(logits, prev_ids=ids, **knobs)
    gpu = process_logits(logits.cuda(), prev_ids=ids.cuda(), **knobs)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-6, atol=1e-6)
    assert torch.equal(gpu.isinf().cpu(), cpu.isinf())
    state = torch.cuda.get_rng_state()
    a = sample_next(gpu, generator=make_generator(5, "cuda"))
    b = sample_next(gpu, generator=make_generator(5, "cuda"))
    assert a.is_cuda and torch.equal(a, b) and (~cpu.isinf()).gather(1, a.cpu()[:, None]).all()
    assert torch.equal(torch.cuda.get_rng_state(), state)
