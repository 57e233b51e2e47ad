"""PagedCache against DynamicCache (per sequence, under random appends, crops and frees), the full forward,
and transformers' greedy ``generate``; pool exhaustion leaves every sequence as it was."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlcore.inference import DynamicCache, generate
from mlcore.inference.paged_cache import PagedCache
from mlcore.model import Transformer, TransformerConfig

from ..model._model_testutils import VOCAB, left_padded_batch, llama_family, randomize_


def _model(**kw) -> Transformer:
    base = dict(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
    base.update(kw)
    return randomize_(Transformer(TransformerConfig(**base)))


def _stepwise(model, ids, mask, cache, prefill):
    with torch.no_grad():
        steps = [model(ids[:, :prefill], attention_mask=mask[:, :prefill], cache=cache)]
        for t in range(prefill, ids.shape[1]):
            steps.append(model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache))
    return torch.cat(steps, dim=1)


@pytest.mark.parametrize("make", [lambda m: PagedCache(num_blocks=10, block_size=3),
                                  lambda m: PagedCache.for_model(m, 2, 14, block_size=4)])
def test_decode_equals_full_forward(make):
    model = _model()
    ids, mask = left_padded_batch([14, 9], 14)
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
    cache = make(model)
    inc = _stepwise(model, ids, mask, cache, prefill=10)
    keep = mask.bool()
    assert (inc[keep] - full[keep]).abs().max() < 1e-4
    assert cache.get_seq_length() == 14
    assert all(len(b) == math.ceil(14 / cache.block_size) for b in cache.block_table.values())


def test_greedy_equals_transformers():
    hf = llama_family("llama")
    ids, mask = left_padded_batch([7, 4, 6], 7)
    ref = hf.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    model = Transformer.from_hf(hf)
    eos = hf.generation_config.eos_token_id
    out = generate(model, ids, attention_mask=mask, max_new_tokens=12, cache="paged", eos_token_id=eos,
                   pad_token_id=0)
    assert torch.equal(out, ref)
    cache = PagedCache(num_blocks=9, block_size=3)  # the prompt fits (3 x 3 blocks), the 19 columns do not
    with pytest.raises(ValueError, match="pool exhausted"):
        generate(model, ids, attention_mask=mask, max_new_tokens=12, cache=cache)


def test_sequences_of_different_lengths_through_views():
    """Two sequences in one pool, each run through the model with its own view; gather pads them."""
    model = _model()
    g = torch.Generator().manual_seed(2)
    a, b = torch.randint(0, VOCAB, (1, 11), generator=g), torch.randint(0, VOCAB, (1, 5), generator=g)
    pool = PagedCache(num_blocks=6, block_size=4)
    sa, sb = pool.add_sequence(), pool.add_sequence()
    with torch.no_grad():
        model(a[:, :3], cache=pool.sequence(sa))
        model(b[:, :2], cache=pool.sequence(sb))  # interleaved growth: blocks alternate between them
        got_a = model(a[:, 3:], cache=pool.sequence(sa))
        got_b = model(b[:, 2:], cache=pool.sequence(sb))
        ref_a, ref_b = DynamicCache(), DynamicCache()
        want_a = model(a, cache=ref_a)[:, 3:]
        want_b = model(b, cache=ref_b)[:, 2:]
    assert (got_a - want_a).abs().max() < 1e-4 and (got_b - want_b).abs().max() < 1e-4
    assert pool.block_table == {sa: [0, 2, 3], sb: [1, 4]}
    k, v, idx = pool.gather([sa, sb], layer_idx=1)
    assert k.shape == (2, 2, 11, 16)
    # layer 1's keys come from chunked vs one-shot layer-0 attention: equal up to float rounding
    assert torch.allclose(k[0], ref_a.keys[1][0], atol=1e-5) and torch.allclose(v[1, :, :5], ref_b.values[1][0], atol=1e-5)
    assert idx[1].tolist() == [0, 1, 2, 3, 4] + [-1] * 6 and not k[1, :, 5:].any()  # padding: zeros, -1
    assert "seq 0: 11 tokens in blocks [0, 2, 3], last block 3/4 full" in pool.describe()
    assert pool.block_owner() == [sa, sb, sa, sa, sb, -1]


def test_exhausted_pool_corrupts_nothing():
    model = _model()
    pool = PagedCache(num_blocks=5, block_size=4)
    other = pool.add_sequence()
    with torch.no_grad():
        model(torch.arange(4)[None], cache=pool.sequence(other))  # 1 block
        ids, mask = left_padded_batch([8, 6], 8)
        model(ids, attention_mask=mask, cache=pool)  # 2 rows x 2 blocks: the pool is full
    before = {s: pool.gather([s], 1) for s in pool.sequences}
    table, free = pool.block_table, list(pool.free_list)
    with torch.no_grad(), pytest.raises(ValueError, match=r"pool exhausted.*needs 2 more blocks.*0 of num_blocks=5"):
        model(torch.tensor([[3], [4]]), attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1),
              cache=pool)
    assert pool.block_table == table and pool.free_list == free and pool.get_seq_length(1) == 8
    for s, (k, v, idx) in before.items():
        k2, v2, idx2 = pool.gather([s], 1)
        assert torch.equal(k, k2) and torch.equal(v, v2) and torch.equal(idx, idx2)
    pool.free(other)  # its block goes back ...
    pool.crop(-4)  # ... and so does one block of each row
    assert pool.free_blocks == 3 and pool.get_seq_length() == 4


def test_crop_then_continue_equals_full_forward():
    model = _model()
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(4))
    cache = PagedCache(num_blocks=14, block_size=2)
    with torch.no_grad():
        full = model(ids)
        model(ids[:, :9], cache=cache)
        model((ids[:, 9:12] + 1) % VOCAB, cache=cache)  # three rejected tokens
        cache.crop(9)
        assert cache.free_blocks == 14 - 2 * 5
        rest = model(ids[:, 9:], cache=cache)
    assert (rest - full[:, 9:]).abs().max() < 1e-4


_OPS = st.lists(st.tuples(st.sampled_from(["add", "append", "append", "free", "crop"]), st.integers(0, 50),
                          st.integers(1, 6)), min_size=1, max_size=25)


@settings(max_examples=40, deadline=None)
@given(ops=_OPS, block_size=st.integers(1, 4), num_blocks=st.integers(3, 12), seed=st.integers(0, 2**16))
def test_property_matches_dynamic_cache_per_sequence(ops, block_size, num_blocks, seed):
    """Random interleavings of add / append / crop / free: each sequence reads back exactly what a DynamicCache
    of its own holds (keys, values, indices, for two layers); blocks are never shared, never lost, and a
    freed block is the first one handed out again."""
    g = torch.Generator().manual_seed(seed)
    pool = PagedCache(num_blocks, block_size)
    ref: dict[int, DynamicCache] = {}
    ref_index: dict[int, torch.Tensor] = {}
    for op, pick, n in ops:
        live = sorted(ref)
        if op == "add" or not live:
            sid = pool.add_sequence()
            ref[sid], ref_index[sid] = DynamicCache(), torch.zeros(1, 0, dtype=torch.long)
            continue
        sid = live[pick % len(live)]
        length = pool.seq_length(sid)
        if op == "append":
            k, v = torch.randn(2, 1, 2, n, 3, generator=g)
            index = torch.arange(length, length + n)[None]
            index = torch.where(torch.rand(1, n, generator=g) < 0.2, -1, index)  # some padding
            need = math.ceil((length + n) / block_size) - len(pool.block_table[sid])
            if need > pool.free_blocks:
                table, free = pool.block_table, list(pool.free_list)
                with pytest.raises(ValueError, match="pool exhausted"):
                    pool.append(sid, 0, k, v, index)
                assert pool.block_table == table and pool.free_list == free
                continue
            handed = pool.free_list[::-1][:max(need, 0)]  # the top of the free stack: last freed first
            for layer in (0, 1):
                got = pool.append(sid, layer, k * (layer + 1), v, index)
                want = ref[sid].update(layer, k * (layer + 1), v, index)
                assert all(torch.equal(x, y) for x, y in zip(got, want))
            ref_index[sid] = torch.cat([ref_index[sid], index], dim=1)
            assert pool.block_table[sid][len(pool.block_table[sid]) - max(need, 0):] == handed
        elif op == "free":
            blocks = pool.block_table[sid]
            pool.free(sid)
            del ref[sid]
            assert set(blocks) <= set(pool.free_list)
        else:
            m = pick % (length + 1)
            pool.crop_sequence(sid, m)
            ref[sid].crop(m)
            ref_index[sid] = ref_index[sid][:, :m]
        # invariants: disjoint tables, nothing lost, each sequence holds just the blocks its length needs
        owned = [b for blocks in pool.block_table.values() for b in blocks]
        assert len(owned) == len(set(owned)) and sorted(owned + pool.free_list) == list(range(num_blocks))
        for s, blocks in pool.block_table.items():
            assert len(blocks) == math.ceil(pool.seq_length(s) / block_size)
        filled = [s for s in sorted(ref) if pool.seq_length(s) > 0]
        if filled:  # no cross-talk: every sequence still reads back its own data, alone or padded in a batch
            k, v, idx = pool.gather(filled, 1)
            for row, s in enumerate(filled):
                L = pool.seq_length(s)
                assert torch.equal(k[row, :, :L], ref[s].keys[1][0]) and torch.equal(v[row, :, :L], ref[s].values[1][0])
                assert torch.equal(idx[row, :L], ref_index[s][0]) and (idx[row, L:] == -1).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_blocks"):
        PagedCache(0)
    with pytest.raises(ValueError, match="block_size"):
        PagedCache(4, block_size="4")
    pool = PagedCache(4, block_size=2)
    with pytest.raises(ValueError, match="seq_id 7"):
        pool.free(7)
    pool.update(0, torch.zeros(2, 1, 1, 4), torch.zeros(2, 1, 1, 4), torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="2 batch rows"):
        pool.update(0, torch.zeros(3, 1, 1, 4), torch.zeros(3, 1, 1, 4), torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(Hkv, D\)"):
        pool.update(0, torch.zeros(2, 2, 1, 4), torch.zeros(2, 2, 1, 4), torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one"):
        pool.gather([], 0)
    assert "PagedCache(num_blocks=4, block_size=2, sequences=2, free_blocks=2)" == repr(pool)


@pytest.mark.cuda
def test_cuda_decode_equals_full_forward():
    model = _model().cuda()
    ids, mask = (t.cuda() for t in left_padded_batch([14, 9], 14))
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
    cache = PagedCache.for_model(model, 2, 14, block_size=4)
    assert cache.k_pool[0].is_cuda
    inc = _stepwise(model, ids, mask, cache, prefill=10)
    assert (inc[mask.bool()] - full[mask.bool()]).abs().max() < 1e-4


def test_a_refused_first_update_leaves_nothing_behind():
    """Pool exhausted on a batch's first update: the ValueError comes before any sequence is made (the docstring's
    promise); a StaticCache refusing an over-long first update allocates nothing; integer k / v are refused."""
    from mlcore.inference import StaticCache

    cache = PagedCache(num_blocks=2, block_size=4)
    k = torch.randn(3, 2, 4, 8)
    with pytest.raises(ValueError, match="num_blocks=2"):
        cache.update(0, k, k, torch.arange(4).expand(3, 4))
    assert cache.rows is None and not cache.sequences and len(cache.free_list) == 2
    static = StaticCache(max_len=3)
    with pytest.raises(ValueError, match="max_len=3"):
        static.update(0, k, k, torch.arange(4).expand(3, 4))
    assert not static.keys
    with pytest.raises(ValueError, match="floating-point"):
        DynamicCache().update(0, k.long(), k.long(), torch.arange(4).expand(3, 4))
