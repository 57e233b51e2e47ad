"""The engine in-process: ragged batches, preemption, prefix caching and the block manager's accounting.

Reference: ``mlcore.inference.generate`` on each request alone (greedy, and seeded sampling)."""

from __future__ import annotations

import pytest
import torch

from mlcore.inference import PagedCache, generate
from mlcore.inference.paged_batch import PagedBatch
from mlcore.serve import BlockManager, Engine, EngineConfig, SamplingParams, block_hashes


@pytest.fixture(scope="module")
def tiny():
    from mlcore.training.assets import load_tiny

    return load_tiny("target")


def solo(model, prompt: list[int], n: int, **kw) -> list[int]:
    return generate(model, torch.tensor([prompt]), max_new_tokens=n, **kw)[0, len(prompt):].tolist()


def prompts(tok, k: int) -> list[list[int]]:
    base = tok.encode_ordinary("The try statement specifies exception handlers and cleanup code for a group of "
                               "statements, and the with statement wraps a block with methods of a manager.")
    return [base[i % 5: i % 5 + 3 + (i * 7) % 25] for i in range(k)]


def test_preemption_of_the_newest_keeps_outputs_equal_and_frees_every_block(tiny):
    model, tok = tiny
    ps = prompts(tok, 6)
    lens = [14, 16, 12, 15, 17, 13]
    engine = Engine(model, EngineConfig(num_blocks=7, block_size=8, max_step_tokens=64, prefix_caching=False))
    seqs = [engine.submit(p, SamplingParams(max_tokens=n)) for p, n in zip(ps, lens)]
    engine.run_until_done()
    assert engine.scheduler.preemptions > 0
    assert seqs[0].preemptions == 0  # the oldest is never the one preempted
    for s, p, n in zip(seqs, ps, lens):
        assert s.output == solo(model, p, n)
    assert engine.blocks.available == engine.cache.free_blocks == 7


def test_prefix_cache_shares_blocks_by_refcount_and_stays_correct(tiny):
    model, tok = tiny
    system = tok.encode_ordinary("You are a careful bank assistant. Never reveal card numbers or account data. "
                                 "Answer briefly and politely, in plain words.")[:32]
    a, b = system + tok.encode_ordinary(" What is a loan?"), system + tok.encode_ordinary(" Define interest.")
    engine = Engine(model, EngineConfig(num_blocks=32, block_size=8))
    sa = engine.submit(a, SamplingParams(max_tokens=6))
    engine.step()  # A's prompt is computed: its full blocks are registered
    sb = engine.submit(b, SamplingParams(max_tokens=6))
    engine.step()
    assert sb.cached_tokens == 32 and sb.blocks[:4] == sa.blocks[:4]
    assert all(engine.blocks.refcount[blk] == 2 for blk in sa.blocks[:4])
    engine.run_until_done()
    assert sa.output == solo(model, a, 6) and sb.output == solo(model, b, 6)
    assert engine.blocks.available == 32 and len(engine.blocks.evictable) >= 4  # cached, not leaked
    sc = engine.submit(list(a), SamplingParams(max_tokens=6))  # the same prompt again: all but one block cached
    engine.run_until_done()
    assert sc.cached_tokens == 8 * ((len(a) - 1) // 8) and sc.output == sa.output


def test_block_manager_lru_eviction_and_double_release():
    cache = PagedCache(4, 2)
    bm = BlockManager(cache)
    blocks = bm.allocate(2)
    hashes = block_hashes([1, 2, 3, 4], 2)
    for blk, h in zip(blocks, hashes):
        bm.register(blk, h)
    bm.release(blocks)
    assert bm.free == 2 and len(bm.evictable) == 2 and bm.available == 4
    assert bm.match_prefix(block_hashes([1, 2, 9, 9], 2)) == blocks[:1]  # chained: block 2 differs
    bm.release(blocks[:1])
    got = bm.allocate(3)  # 2 free + the least recently used cached block
    assert len(got) == 3 and len(bm.block_of) == 1
    with pytest.raises(ValueError, match="available"):
        bm.allocate(2)
    bm.release(got)
    with pytest.raises(ValueError, match="released more often"):
        bm.release(got[:1])
    assert block_hashes([1, 2, 3], 2) == block_hashes([1, 2], 2) != block_hashes([1, 2], 2, salt="other")


def test_seeded_sampling_matches_generate_with_the_same_seed(tiny):
    model, tok = tiny
    p = prompts(tok, 3)
    engine = Engine(model, EngineConfig(num_blocks=32, block_size=8))
    params = [SamplingParams(max_tokens=10, temperature=0.8, top_p=0.9, seed=s) for s in (1, 2, 3)]
    seqs = [engine.submit(q, sp) for q, sp in zip(p, params)]
    engine.run_until_done()
    for s, q, sp in zip(seqs, p, params):
        assert s.output == solo(model, q, 10, temperature=0.8, top_p=0.9, seed=sp.seed)


def test_bad_requests_and_views_raise_clear_errors(tiny):
    model, _ = tiny
    engine = Engine(model, EngineConfig(num_blocks=4, block_size=8))
    with pytest.raises(ValueError, match="prompt must be a non-empty list"):
        engine.submit([], SamplingParams())
    with pytest.raises(ValueError, match="token ids in"):
        engine.submit([5000])
    with pytest.raises(ValueError, match="max_tokens"):
        engine.submit([1, 2], SamplingParams(max_tokens=0))
    with pytest.raises(ValueError, match="more blocks than the pool"):
        engine.submit([1] * 30, SamplingParams(max_tokens=10))
    with pytest.raises(ValueError, match="at most 255"):
        engine.submit([1] * 256)
    with pytest.raises(ValueError, match="temperature"):
        engine.submit([1], SamplingParams(temperature=-1.0))
    with pytest.raises(ValueError, match="cannot hold"):
        PagedBatch(engine.cache, [[0]], [8], [1], 256)
    with pytest.raises(ValueError, match="starts \\+ new <= max_seq_len"):
        PagedBatch(engine.cache, [[0]], [255], [2], 256)
    with pytest.raises(ValueError, match="policy"):
        Engine(model, EngineConfig(policy="fifo"))


@pytest.mark.cuda
def test_engine_on_cuda_equals_generate_with_preemption_and_prefix_hits(tiny):
    model, tok = tiny
    model = model.to("cuda")
    shared = tok.encode_ordinary("The try statement specifies exception handlers and cleanup code.")[:8]
    ps = [shared + p for p in prompts(tok, 8)]  # a shared first block for the prefix cache
    lens = [12 + 3 * i for i in range(8)]
    engine = Engine(model, EngineConfig(num_blocks=14, block_size=8, max_step_tokens=48))
    assert engine.cache.k_pool[0].device.type == "cuda"
    seqs = [engine.submit(p, SamplingParams(max_tokens=n)) for p, n in zip(ps, lens)]
    engine.run_until_done()
    for s, p, n in zip(seqs, ps, lens):
        ref = generate(model, torch.tensor([p], device="cuda"), max_new_tokens=n)[0, len(p):].tolist()
        assert s.output == ref
    assert engine.blocks.available == 14 and engine.scheduler.preemptions > 0 and engine.blocks.hits > 0
    model.to("cpu")


@pytest.mark.parametrize("extra", [{"sliding_window": 6}, {"position": "alibi"}, {"position": "learned"}])
def test_ragged_rows_keep_windows_alibi_and_learned_positions_exact(extra):
    """The right-aligned key indices of PagedBatch keep every distance: windows and ALiBi come out as alone."""
    from mlcore.model import Transformer, TransformerConfig

    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                          max_seq_len=48, **extra)).eval()
    g = torch.Generator().manual_seed(1)
    ps = [torch.randint(0, 64, (n,), generator=g).tolist() for n in (3, 11, 7, 17)]
    engine = Engine(model, EngineConfig(num_blocks=24, block_size=4, max_step_tokens=16))
    seqs = [engine.submit(p, SamplingParams(max_tokens=9)) for p in ps]
    engine.run_until_done()
    for s, p in zip(seqs, ps):
        assert s.output == solo(model, p, 9)


def test_static_policy_admits_only_into_an_empty_batch(tiny):
    model, tok = tiny
    engine = Engine(model, EngineConfig(num_blocks=16, block_size=8, max_running=2, policy="static",
                                        batch_timeout=0.0))
    a, b, c = (engine.submit(p, SamplingParams(max_tokens=n)) for p, n in zip(prompts(tok, 3), (3, 6, 2)))
    while not (a.finish_reason and b.finish_reason):
        engine.step()
        assert c.num_computed == 0 and not c.output  # waits for the whole batch, even after a finished
    engine.run_until_done()
    assert len(c.output) == 2
