"""Bad requests to ``generate`` / ``speculative_generate``: a clear ValueError naming the argument, and a cache
object handed in is left as it was (a refused request writes nothing; an exhausted paged pool leaves the other
sequences' blocks and values alone).

References: the message names the argument (matched by regex); the untouched state is compared with a copy
taken before the call, and the reused cache with a fresh one on the next good request.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import transformers

from mlcore.inference import DynamicCache, StaticCache, generate
from mlcore.inference.speculative import speculative_generate
from mlcore.model import Transformer

from ..model._model_testutils import left_padded_batch, llama_family
from ._gen_testutils import pair

IDS, MASK = left_padded_batch([4, 9], 9)
ONE, _ = left_padded_batch([9], 9)


def _model() -> Transformer:
    return pair("llama")[1]  # max_seq_len 64, vocab 128


def _draft() -> Transformer:
    return Transformer.from_hf(llama_family("llama", seed=3, num_hidden_layers=1)).eval()


SAMPLING = [
    (dict(temperature=-0.5), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_p=-0.1), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(top_k=-2), "top_k"),
    (dict(top_k=2.5), "top_k"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(max_new_tokens=2.0), "max_new_tokens"),
    (dict(max_new_tokens=60), "max_new_tokens.*max_seq_len=64"),  # 9 + 60 columns > 64 positions
    (dict(input_ids=torch.zeros(1, 0, dtype=torch.long), attention_mask=None), "input_ids"),
    (dict(input_ids=torch.zeros(0, 4, dtype=torch.long), attention_mask=None), "input_ids"),
    (dict(input_ids=IDS.float()), "input_ids"),
    (dict(input_ids=IDS + 128), "input_ids.*vocab_size=128"),
    (dict(attention_mask=MASK[:, 1:]), "attention_mask"),
    (dict(attention_mask=MASK[:1]), "attention_mask"),
    (dict(attention_mask=MASK * 2), "attention_mask"),
    (dict(attention_mask=torch.cat([torch.zeros(2, 9, dtype=torch.long)])), "attention_mask"),
    (dict(eos_token_id=-1), "eos_token_id"),
    (dict(seed="7"), "seed"),
    (dict(attention_mask=MASK.flip(1), input_ids=IDS.flip(1)), "left-padded"),
    (dict(pad_token_id=128, eos_token_id=3), "pad_token_id"),
    (dict(pad_token_id=-1, eos_token_id=3), "pad_token_id"),
    (dict(pad_token_id=2.5, eos_token_id=3), "pad_token_id"),
    (dict(temperature=None), "temperature.*None"),  # was TypeError: '<' not supported ... NoneType and float
]


def _call(fn, **kw):
    args = dict(input_ids=IDS, attention_mask=MASK, max_new_tokens=4)
    args.update(kw)
    ids = args.pop("input_ids")
    if fn is generate:
        return generate(_model(), ids, **args)
    return speculative_generate(_model(), _draft(), ids, **args)


@pytest.mark.parametrize("fn", [generate, speculative_generate], ids=["generate", "speculative"])
@pytest.mark.parametrize(("kw", "named"), SAMPLING, ids=[f"{n.split('.')[0]}-{i}" for i, (_, n) in enumerate(SAMPLING)])
def test_bad_argument_is_named(fn, kw: dict, named: str) -> None:
    if kw.get("seed") is not None:
        kw = {**kw, "temperature": 1.0}  # the seed is read only when sampling
    with pytest.raises(ValueError, match=named):
        _call(fn, **kw)


@pytest.mark.parametrize(("kw", "named"), [
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(stop=[[]]), "stop"),
    (dict(stop=[1, 2]), "stop"),
    (dict(cache="bogus"), "cache"),
    (dict(cache=transformers.DynamicCache()), "transformers"),
    (dict(cache=None), "cache must be one of"),
    (dict(stop=[[True]]), "stop"),
    (dict(streamer=5), "streamer"),
    (dict(seed=2**64), "seed"),
    (dict(seed=1.5), "seed"),  # named although greedy decoding never draws
    (dict(input_ids=IDS - 1, repetition_penalty=1.2), "input_ids must be token ids >= 0"),
    (dict(stop=13), "stop"),  # was TypeError: 'int' object is not iterable
    (dict(streamer=transformers.TextStreamer), "streamer.*class TextStreamer"),  # was TypeError in put()
    (dict(stop=[[5]], eos_token_id=500), "eos_token_id.*pad_token_id"),  # a stopped row is padded with eos[0]
])
def test_generate_only_arguments(kw: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        _call(generate, **kw)


@pytest.mark.parametrize(("kw", "named"), [
    (dict(num_draft_tokens=0), "num_draft_tokens"),
    (dict(num_draft_tokens=True), "num_draft_tokens"),
    (dict(cache=("dynamic",)), "cache"),
])
def test_speculative_only_arguments(kw: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        _call(speculative_generate, **kw)


def test_draft_with_another_vocabulary_or_fewer_positions() -> None:
    model = _model()
    small_vocab = Transformer.from_hf(llama_family("llama", seed=1, vocab_size=100)).eval()
    with pytest.raises(ValueError, match=r"draft has vocab_size=100"):
        speculative_generate(model, small_vocab, IDS, attention_mask=MASK, max_new_tokens=4)
    short = Transformer.from_hf(llama_family("llama", seed=1, max_position_embeddings=16)).eval()
    with pytest.raises(ValueError, match=r"draft's max_seq_len=16"):
        speculative_generate(model, short, IDS, attention_mask=MASK, max_new_tokens=10)


def _snapshot(cache: StaticCache) -> list[torch.Tensor]:
    return [t.clone() for t in (*cache.keys.values(), *cache.values.values(), cache.index)]


@pytest.mark.parametrize(("kw", "named"), [
    (dict(max_new_tokens=8), "max_new_tokens"),  # 9 + 8 > the cache's 13 columns
    (dict(input_ids=IDS + 128), "vocab_size"),  # refused by the prefill's check, before any layer writes
    (dict(top_p=2.0), "top_p"),
    (dict(attention_mask=MASK[:, 2:]), "attention_mask"),
])
def test_refused_request_leaves_a_static_cache_untouched(kw: dict, named: str) -> None:
    model = _model()
    cache = StaticCache.for_model(model, 2, 13)
    before = _snapshot(cache)
    with pytest.raises(ValueError, match=named):
        _call(generate, cache=cache, **kw)
    assert cache.get_seq_length() == 0
    assert all(torch.equal(a, b) for a, b in zip(before, _snapshot(cache)))
    reused = generate(model, IDS, attention_mask=MASK, max_new_tokens=3, cache=cache)
    torch.testing.assert_close(reused, generate(model, IDS, attention_mask=MASK, max_new_tokens=3), rtol=0, atol=0)


def test_a_cache_in_use_is_refused_and_left_alone() -> None:
    model = _model()
    cache = DynamicCache()
    generate(model, IDS, attention_mask=MASK, max_new_tokens=2, cache=cache)
    held = cache.get_seq_length()
    keys = cache.keys[0].clone()
    with pytest.raises(ValueError, match="cache must be empty"):
        generate(model, IDS, attention_mask=MASK, max_new_tokens=2, cache=cache)
    assert cache.get_seq_length() == held and torch.equal(cache.keys[0], keys)


@pytest.mark.skipif(importlib.util.find_spec("mlcore.inference.paged_cache") is None, reason="no PagedCache yet")
def test_exhausted_paged_pool_spares_the_other_sequences() -> None:
    from mlcore.inference.paged_cache import PagedCache

    model = _model()
    pool = PagedCache(num_blocks=6, block_size=4)
    other = pool.add_sequence()
    other_ids, _ = left_padded_batch([7], 7, seed=9)
    with torch.no_grad():
        model(other_ids, cache=pool.sequence(other))  # 7 columns: 2 blocks
    layers = range(model.config.n_layers)
    before = [[t.clone() for t in pool.gather([other], layer)] for layer in layers]
    table = pool.block_table[other]

    # 9 prompt + 9 new tokens put 17 columns in the cache (the last token is never fed back): 5 blocks, and
    # 4 are free, so the pool runs dry while decoding
    assert pool.free_blocks == 4 < math.ceil((9 + 9 - 1) / 4)
    with pytest.raises(ValueError, match=r"PagedCache pool exhausted.*num_blocks"):
        generate(model, ONE, max_new_tokens=9, cache=pool)
    assert pool.block_table[other] == table
    for layer, saved in zip(layers, before):
        for a, b in zip(saved, pool.gather([other], layer)):
            assert torch.equal(a, b)

    pool.free_rows()  # the failed request's blocks come back; the pool serves a request that fits
    assert pool.free_blocks == 4
    out = generate(model, ONE, max_new_tokens=8, cache=pool)  # 16 columns: 4 blocks
    torch.testing.assert_close(out, generate(model, ONE, max_new_tokens=8), rtol=0, atol=0)
    assert pool.block_table[other] == table


def test_eos_token_id_may_be_a_tensor() -> None:
    """transformers' generate takes EOS ids as a tensor too; so does generate, with the same result as a list."""
    as_list = generate(_model(), IDS, attention_mask=MASK, max_new_tokens=6, eos_token_id=[5, 7])
    as_tensor = generate(_model(), IDS, attention_mask=MASK, max_new_tokens=6, eos_token_id=torch.tensor([5, 7]))
    assert torch.equal(as_list, as_tensor)
    assert torch.equal(generate(_model(), IDS, attention_mask=MASK, max_new_tokens=6, eos_token_id=torch.tensor(5)),
                       generate(_model(), IDS, attention_mask=MASK, max_new_tokens=6, eos_token_id=5))


def test_numpy_integers_are_token_ids() -> None:
    """transformers takes EOS ids and top_k as numpy integers (from a tokenizer or an array); so does generate."""
    np = pytest.importorskip("numpy")
    ref = generate(_model(), IDS, attention_mask=MASK, max_new_tokens=6, eos_token_id=5, temperature=1.0, top_k=3,
                   seed=1)
    out = generate(_model(), IDS, attention_mask=MASK, max_new_tokens=6, eos_token_id=np.int64(5), temperature=1.0,
                   top_k=np.int64(3), seed=np.int64(1))
    assert torch.equal(out, ref)


def test_hand_built_sliding_cache_with_sinks_needs_the_rope() -> None:
    """Without rope= the sink keys would keep their old rotation on a RoPE model (a silent error of ~1.5 in the
    logits); for_model passes it."""
    from mlcore.inference import SlidingWindowCache

    model = _model()
    with pytest.raises(ValueError, match="rope="):
        generate(model, ONE, max_new_tokens=4, cache=SlidingWindowCache(4, 2))
    ok = SlidingWindowCache.for_model(model, 1, 13, window=4, sinks=2)
    assert generate(model, ONE, max_new_tokens=4, cache=ok).shape == (1, 13)


def test_hand_built_sliding_cache_on_learned_positions_is_refused_up_front() -> None:
    from mlcore.inference import SlidingWindowCache

    model = pair("gpt2")[1]
    limit = model.config.max_seq_len
    with pytest.raises(ValueError, match="cannot stream past it"):
        generate(model, ONE, max_new_tokens=limit, cache=SlidingWindowCache(8))


def test_cache_constructors_name_a_bad_batch_and_dynamic_cache_a_changed_head_shape() -> None:
    from mlcore.inference import SlidingWindowCache

    for cls in (StaticCache, SlidingWindowCache):
        for batch in (0, -1):
            with pytest.raises(ValueError, match="batch"):
                cls.for_model(_model(), batch, 16)
    cache = DynamicCache()
    index = torch.arange(3)[None]
    cache.update(0, torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8), index)
    with pytest.raises(ValueError, match=r"\(B, Hkv, D\)"):
        cache.update(0, torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), index)


def test_numpy_integers_for_pad_and_length_and_an_eos_array() -> None:
    """pad_token_id and max_new_tokens as numpy integers and EOS ids as a numpy array (what a tokenizer or an
    array hands over, and transformers takes) mean what the Python ints mean; they used to be refused
    (pad_token_id, max_new_tokens) or refused as an array (eos_token_id), while numpy EOS scalars passed."""
    np = pytest.importorskip("numpy")
    from mlcore.inference.hf import hf_generate

    hf, model = pair("llama")
    ref = generate(model, IDS, attention_mask=MASK, max_new_tokens=6, eos_token_id=[5, 7], pad_token_id=3)
    for fn, m in ((generate, model), (hf_generate, hf)):
        out = fn(m, IDS, attention_mask=MASK, max_new_tokens=np.int64(6), eos_token_id=np.array([5, 7]),
                 pad_token_id=np.int64(3))
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
    out = speculative_generate(model, _draft(), IDS, attention_mask=MASK, max_new_tokens=np.int32(6),
                               eos_token_id=np.array([5, 7]), pad_token_id=np.int64(3), cache="static")
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="eos_token_id"):
        generate(model, IDS, max_new_tokens=2, eos_token_id=np.array([5.0]))


def test_a_cache_class_instead_of_an_object_is_named() -> None:
    """cache=StaticCache (the class) has the protocol's methods, unbound: it used to fail inside get_seq_length
    with a TypeError about 'self'."""
    with pytest.raises(ValueError, match="cache must be a cache object, got the class StaticCache"):
        generate(_model(), IDS, attention_mask=MASK, max_new_tokens=2, cache=StaticCache)


@pytest.mark.parametrize("fn", [generate, speculative_generate], ids=["generate", "speculative"])
def test_a_refused_mask_read_from_the_pad_id_names_the_pad_id(fn) -> None:
    """Without attention_mask the pad id marks padding (as transformers); when that makes the last column padding
    or a row all padding, the error used to blame an 'attention_mask' the caller never passed."""
    ids = IDS.clone()
    ids[1, -1] = 3  # pad id 3 in the last column: would be right padding
    with pytest.raises(ValueError, match="no attention_mask was given, so pad_token_id=3 .*left-padded"):
        _call(fn, input_ids=ids, attention_mask=None, pad_token_id=3)
    with pytest.raises(ValueError, match="pad_token_id=7 .*no token"):
        _call(fn, input_ids=torch.full((1, 4), 7), attention_mask=None, pad_token_id=7)
    with pytest.raises(ValueError, match="^attention_mask must be left-padded"):  # a mask given is named as before
        _call(fn, input_ids=IDS, attention_mask=MASK.flip(1))


@pytest.mark.parametrize("kind", ["static", "paged", "sliding", "int8"])
def test_a_cache_object_of_another_dtype_is_refused_before_it_is_written(kind: str) -> None:
    """A float16 cache on a float32 model used to be refused deep in attention ('k dtype ... q dtype') after the
    prefill had written layer 0 into it; now make_cache names it up front and the cache stays empty."""
    from mlcore.inference import make_cache

    cache = make_cache(kind, _model(), batch=2, max_len=16, dtype=torch.float16)
    with pytest.raises(ValueError, match="cache was allocated in torch.float16 but the model computes in"):
        generate(_model(), IDS, attention_mask=MASK, max_new_tokens=4, cache=cache)
    assert cache.get_seq_length() == 0


@pytest.mark.parametrize("fn", [generate, speculative_generate], ids=["generate", "speculative"])
def test_a_first_eos_outside_the_vocabulary_cannot_pad_a_finished_row(fn) -> None:
    """pad_token_id defaults to the first EOS id (transformers' rule); one >= vocab_size was fed back to the model
    by the first row to finish on the other EOS id: IndexError deep in the embedding. Named up front now; an EOS
    list that can never finish a row keeps working, as does an explicit pad id."""
    free = generate(_model(), IDS, attention_mask=MASK, max_new_tokens=4)[:, 9:]
    eos = [500, int(free[0, 0])]  # row 0 finishes at its first new token
    with pytest.raises(ValueError, match=r"eos_token_id\[0\]=500.*vocab_size=128.*pad_token_id"):
        _call(fn, eos_token_id=eos)
    torch.testing.assert_close(_call(fn, eos_token_id=[500]), _call(fn), rtol=0, atol=0)  # never finishes a row
    out = _call(fn, eos_token_id=eos, pad_token_id=7)
    assert out[0, 9:].tolist() == [eos[1], 7, 7, 7]
