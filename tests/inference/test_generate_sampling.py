"""Sampling through ``generate``: per-call seeds, the global RNG left alone, top-k / top-p kept sets, streaming,
stop sequences.

References: the kept sets are recomputed from a full forward of the model without a cache (top-k: logits at
or above the k-th largest; top-p: tokens whose strictly more probable tokens hold less than p, transformers'
rule); the streamer is compared with what transformers' ``generate`` hands a streamer on the same weights;
stop sequences with the unrestricted greedy continuation.
"""

from __future__ import annotations

import pytest
import torch
from transformers.generation.streamers import BaseStreamer

from mlcore.inference import generate
from mlcore.inference.hf import hf_generate

from ._gen_testutils import PROMPT_LEN, batch, full_logits, pair

NEW = 12


def _sample(seed: int | None, **kw) -> torch.Tensor:
    _, model = pair("llama")
    ids, mask = batch("padded")
    kw = {"temperature": 1.0, "top_k": 20, **kw}
    return generate(model, ids, attention_mask=mask, max_new_tokens=NEW, seed=seed, **kw)


def test_seed_reproduces_and_different_seeds_differ() -> None:
    a, b = _sample(7), _sample(7)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    others = [_sample(s) for s in (8, 9)]
    assert all(not torch.equal(a, o) for o in others)


@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_sampling_is_independent_of_the_global_rng(cache: str) -> None:
    torch.manual_seed(0)
    a = _sample(3, cache=cache)
    torch.manual_seed(12345)
    state = torch.get_rng_state()
    b = _sample(3, cache=cache)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # the global seed changed nothing
    assert torch.equal(state, torch.get_rng_state())  # and the global RNG did not advance
    _sample(None, cache=cache)  # an unseeded call draws its seed from the OS, not from torch's global RNG
    assert torch.equal(state, torch.get_rng_state())


def test_same_seed_same_tokens_across_cache_kinds() -> None:
    torch.testing.assert_close(_sample(5, cache="static"), _sample(5, cache="dynamic"), rtol=0, atol=0)


def _step_logits(out: torch.Tensor) -> torch.Tensor:
    """Logits (B, NEW, V) that produced each new token, from one full forward without a cache."""
    _, model = pair("llama")
    _, mask = batch("padded")
    return full_logits(model, out, mask)[:, :-1].double()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_k_tokens_stay_in_the_top_k(seed: int) -> None:
    k = 3
    out = _sample(seed, temperature=2.0, top_k=k)
    logits = _step_logits(out)
    new = out[:, PROMPT_LEN:]
    chosen = logits.gather(-1, new[..., None]).squeeze(-1)  # (B, NEW)
    kth = logits.topk(k, dim=-1).values[..., -1]
    assert bool((chosen >= kth - 1e-4).all()), (chosen - kth).min()
    assert bool((new != logits.argmax(-1)).any())  # it did sample, not only take the argmax


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_p_tokens_stay_in_the_nucleus(seed: int) -> None:
    p, temperature = 0.6, 1.5
    out = _sample(seed, temperature=temperature, top_k=None, top_p=p)
    probs = torch.softmax(_step_logits(out) / temperature, dim=-1)  # (B, NEW, V)
    new = out[:, PROMPT_LEN:]
    chosen = probs.gather(-1, new[..., None])  # (B, NEW, 1)
    mass_above = (probs * (probs > chosen)).sum(-1)  # probability of the strictly more probable tokens
    assert bool((mass_above < p + 1e-4).all()), mass_above.max()
    assert bool((new != probs.argmax(-1)).any())


class _Recorder(BaseStreamer):
    """A transformers streamer that records every ``put`` and counts ``end`` calls."""

    def __init__(self) -> None:
        self.puts: list[torch.Tensor] = []
        self.ends = 0

    def put(self, value: torch.Tensor) -> None:
        self.puts.append(value.clone())

    def end(self) -> None:
        self.ends += 1


def test_callable_streamer_gets_each_step_in_order() -> None:
    _, model = pair("llama")
    ids, mask = batch("padded")
    got: list[torch.Tensor] = []
    out = generate(model, ids, attention_mask=mask, max_new_tokens=NEW, streamer=got.append)
    assert len(got) == NEW and all(t.shape == (3,) for t in got)
    torch.testing.assert_close(torch.stack(got, dim=1), out[:, PROMPT_LEN:], rtol=0, atol=0)


def test_transformers_streamer_sees_what_transformers_gives_it() -> None:
    hf, model = pair("gpt2")
    ids, mask = batch("single")
    ours, theirs = _Recorder(), _Recorder()
    out = generate(model, ids, attention_mask=mask, max_new_tokens=NEW, streamer=ours)
    hf_generate(hf, ids, attention_mask=mask, max_new_tokens=NEW, streamer=theirs)
    assert ours.ends == theirs.ends == 1
    assert [t.shape for t in ours.puts] == [t.shape for t in theirs.puts]  # prompt (1, T), then (1,) per step
    for a, b in zip(ours.puts, theirs.puts):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat(ours.puts[1:]), out[0, PROMPT_LEN:], rtol=0, atol=0)


def test_no_new_tokens_still_puts_the_prompt_and_ends_the_streamer() -> None:
    """max_new_tokens=0 returned the prompt without a put or an end(): a TextIteratorStreamer's reader waited
    forever. The streamer now gets what the docstring promises (transformers refuses 0 outright)."""
    _, model = pair("llama")
    ids, mask = batch("padded")
    rec, calls = _Recorder(), []
    out = generate(model, ids, attention_mask=mask, max_new_tokens=0, streamer=rec)
    generate(model, ids, attention_mask=mask, max_new_tokens=0, streamer=calls.append)
    torch.testing.assert_close(out, ids, rtol=0, atol=0)
    assert rec.ends == 1 and len(rec.puts) == 1 and torch.equal(rec.puts[0], ids)
    assert calls == []  # a callable gets each step's tokens: there are none
    for n in (0, 2):  # int64 whatever the prompt's integer dtype, as transformers' output and generate's for n > 0
        assert generate(model, ids.int(), attention_mask=mask, max_new_tokens=n).dtype == torch.long


def test_stop_sequence_ends_a_row_and_pads_it() -> None:
    _, model = pair("llama")
    ids, mask = batch("padded")
    free = generate(model, ids, attention_mask=mask, max_new_tokens=NEW)[:, PROMPT_LEN:]
    stop = free[1, 3:5].tolist()  # row 1 emits it at steps 3-4
    pad = 127
    out = generate(model, ids, attention_mask=mask, max_new_tokens=NEW, stop=[stop], pad_token_id=pad)
    new = out[:, PROMPT_LEN:]
    for row, ref in zip(new.tolist(), free.tolist()):
        ends = [i + 2 for i in range(len(ref) - 1) if ref[i:i + 2] == stop]
        end = ends[0] if ends else len(ref)
        assert row[:end] == ref[:end]  # the same tokens up to and including the stop sequence
        assert all(t == pad for t in row[end:])  # then padding
    assert new[1, -1].item() == pad  # row 1 did stop early


def test_every_row_stopping_ends_generation_early() -> None:
    _, model = pair("llama")
    ids, mask = batch("single")
    free = generate(model, ids, attention_mask=mask, max_new_tokens=NEW)[:, PROMPT_LEN:]
    out = generate(model, ids, attention_mask=mask, max_new_tokens=NEW, stop=[free[0, 1:3].tolist(), [999]])
    torch.testing.assert_close(out[:, PROMPT_LEN:], free[:, :3], rtol=0, atol=0)


def test_a_temperature_too_small_to_divide_by_decodes_greedily():
    """At temperature 1e-300, ``logits / T`` overflows float32 and softmax gave NaN: the draw raised. Below
    GREEDY_BELOW (1e-5, vLLM's rule) generate and speculative_generate decode greedily, the T -> 0 limit."""
    import torch

    from mlcore.inference import generate, speculative_generate
    from mlcore.training import load_tiny

    target, draft = load_tiny("target")[0].eval(), load_tiny("draft")[0].eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    greedy = generate(target, ids, max_new_tokens=6)
    for t in (1e-300, 1e-6):
        assert torch.equal(generate(target, ids, max_new_tokens=6, temperature=t, seed=1), greedy)
        assert torch.equal(speculative_generate(target, draft, ids, max_new_tokens=6, temperature=t, seed=1),
                           greedy)
