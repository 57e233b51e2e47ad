"""The engine under a fourth audit: LRU eviction order and hit counting of the prefix cache (vLLM's rules), a
failing per-request callback, bad stop ids, duplicate request ids and config values refused by name.

References: ``mlcore.inference.generate`` on each request alone; vLLM v1's free-block queue (evict the least
recently freed block first, a freed request's tail before its head) and prefix-cache stats (one count per
admitted request)."""

from __future__ import annotations

import time

import pytest
import torch

from mlcore.inference import PagedCache, generate
from mlcore.model import Transformer, TransformerConfig
from mlcore.serve import BlockManager, Engine, EngineConfig, SamplingParams, block_hashes
from mlcore.serve.config import ServeConfig


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return Transformer(TransformerConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, max_seq_len=64)).eval()


def solo(model, prompt: list[int], n: int) -> list[int]:
    return generate(model, torch.tensor([prompt]), max_new_tokens=n)[0, len(prompt):].tolist()


def test_eviction_takes_the_least_recently_freed_block_and_a_prefix_tail_first():
    """vLLM's order: freed blocks join the back of the queue, a request's tail before its head; the front goes
    first. The old order evicted the just-freed head first, which stranded the whole cached prompt (0 hits)."""
    bm = BlockManager(PagedCache(6, 2))
    old = bm.allocate(1)
    bm.register(old[0], block_hashes([9, 9], 2)[0])
    bm.release(old)  # cached long ago
    prompt = [1, 2, 3, 4, 5, 6]
    blocks = bm.allocate(3)
    for blk, h in zip(blocks, block_hashes(prompt, 2)):
        bm.register(blk, h)
    bm.release(blocks)
    assert list(bm.evictable) == [old[0], *reversed(blocks)]  # eviction order
    bm.allocate(2)  # the two free blocks
    assert bm.allocate(1) == old  # the least recently freed goes first
    assert bm.allocate(1) == blocks[-1:]  # then the prompt's tail, never its head
    assert len(bm.match_prefix(block_hashes(prompt, 2))) == 2


def test_prefix_hits_count_each_admitted_request_once(small):
    """A request that waits for room looks its prefix up every step; only the admission counts (the gauge
    mlcore_prefix_cache_hits was inflated by every retry)."""
    engine = Engine(small, EngineConfig(num_blocks=10, block_size=4))
    prompt = list(range(1, 17))  # four full blocks
    first = engine.submit(prompt, SamplingParams(max_tokens=1))
    engine.run_until_done()
    long = engine.submit([60] * 20, SamplingParams(max_tokens=15))  # holds most of the pool while it decodes
    engine.step()
    waiter = engine.submit(prompt + [5], SamplingParams(max_tokens=2))
    waited = 0
    while waiter.num_computed == 0:
        engine.step()
        waited += 1
    engine.run_until_done()
    assert waited >= 3 and engine.scheduler.preemptions == 0
    bs = engine.config.block_size
    assert engine.blocks.hits == sum(s.cached_tokens // bs for s in (first, long, waiter)) <= 4
    assert waiter.output == solo(small, prompt + [5], 2)


def test_a_raising_emit_callback_ends_only_its_own_request(small):
    events: list[tuple[int | None, str | None]] = []

    def broken(token, reason):
        raise KeyError("a bug in the caller's callback")

    engine = Engine(small, EngineConfig(num_blocks=16, block_size=4))
    good = engine.submit([1, 2, 3], SamplingParams(max_tokens=4), emit=lambda t, r: events.append((t, r)))
    bad = engine.submit([4, 5, 6], SamplingParams(max_tokens=4), emit=broken)
    engine.run_until_done()  # raised KeyError out of step() before
    assert bad.finish_reason == "error" and isinstance(engine.last_error, KeyError)
    assert good.finish_reason == "length" and good.output == solo(small, [1, 2, 3], 4)
    assert events == [*((t, None) for t in good.output), (None, "length")]
    assert engine.blocks.available == 16
    # in the background thread the error handler called the callback again and the thread died: later requests hung
    engine.start()
    try:
        engine.submit([7, 8], SamplingParams(max_tokens=3), emit=broken)
        later = engine.submit([7, 9], SamplingParams(max_tokens=3))
        deadline = time.monotonic() + 10
        while later.finish_reason is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine._thread.is_alive() and later.output == solo(small, [7, 9], 3)
    finally:
        engine.shutdown(drain=False)


@pytest.mark.parametrize("stops", [None, 5, "ab", (1.5,), (True,)])
def test_bad_stop_token_ids_are_refused_at_submit_not_inside_the_batch(small, stops):
    engine = Engine(small, EngineConfig(num_blocks=16, block_size=4))
    other = engine.submit([1, 2, 3], SamplingParams(max_tokens=3))
    with pytest.raises(TypeError, match="stop_token_ids"):  # raised inside step() before, failing `other` too
        engine.submit([4, 5], SamplingParams(max_tokens=3, stop_token_ids=stops))
    engine.run_until_done()
    assert other.output == solo(small, [1, 2, 3], 3)
    with pytest.raises(TypeError, match="params must be a SamplingParams"):
        engine.submit([4, 5], {"max_tokens": 3})
    with pytest.raises(TypeError, match="prompt must be a list"):
        engine.submit(torch.tensor([4, 5]))


@pytest.mark.parametrize("seed", [1.5, "1", 2**64])
def test_a_bad_seed_is_refused_when_greedy_as_generate_does(small, seed):
    engine = Engine(small, EngineConfig(num_blocks=16, block_size=4))
    with pytest.raises(ValueError, match="seed") as theirs:
        generate(small, torch.tensor([[4, 5]]), max_new_tokens=2, seed=seed)
    with pytest.raises(ValueError, match="seed") as ours:  # silently ignored before
        engine.submit([4, 5], SamplingParams(max_tokens=2, seed=seed))
    assert str(ours.value) == str(theirs.value)


def test_a_request_id_in_use_is_refused_and_free_again_once_finished(small):
    engine = Engine(small, EngineConfig(num_blocks=16, block_size=4))
    a = engine.submit([1, 2, 3], SamplingParams(max_tokens=3), request_id="r1")
    with pytest.raises(ValueError, match="'r1' is already in use"):  # abort("r1") would have stopped both
        engine.submit([4, 5, 6], SamplingParams(max_tokens=3), request_id="r1")
    engine.run_until_done()
    b = engine.submit([4, 5, 6], SamplingParams(max_tokens=3), request_id="r1")
    engine.abort("r1")
    engine.run_until_done()
    assert a.finish_reason == "length" and b.finish_reason == "abort"


@pytest.mark.parametrize(("field", "value"), [
    ("max_step_tokens", 1.5), ("max_step_tokens", float("nan")), ("max_running", float("nan")),
    ("max_running", "4"), ("max_step_tokens", True), ("num_blocks", 2.0), ("block_size", None),
    ("prefix_caching", "no"), ("prefix_caching", 1), ("policy", "fifo"), ("batch_timeout", float("nan")),
    ("batch_timeout", None), ("history", True),
])
def test_engine_config_refuses_bad_values_by_name(field, value):
    """Accepted before, then every step failed (1.5: a 500 for every request), nothing was admitted (NaN: every
    request hung), or the value was read as truthy ("no")."""
    with pytest.raises(ValueError, match=field):
        EngineConfig(**{field: value})


@pytest.mark.parametrize(("field", "value"), [
    ("default_max_tokens", 1.5), ("default_max_tokens", float("nan")), ("max_prompt_tokens", 1.5),
    ("max_body_bytes", float("nan")), ("max_queue", float("inf")), ("port", -1), ("port", "8000"),
    ("default_rpm", float("nan")), ("default_rpm", 0), ("host", None),
])
def test_serve_config_refuses_bad_values_by_name(field, value):
    """default_max_tokens=1.5 answered every completion without max_tokens a 400 about that field; a NaN
    max_body_bytes let any body through; max_prompt_tokens=1.5 refused every prompt."""
    with pytest.raises(ValueError, match=field):
        ServeConfig(**{field: value})
    with pytest.raises(TypeError, match="blocklist"):  # raised in every request (a 500) before
        ServeConfig(blocklist="falcon")
    with pytest.raises(TypeError, match="engine"):
        ServeConfig(engine={"num_blocks": 8})
