"""SlidingWindowCache against a full forward of a sliding-window model, transformers' Mistral ``generate``, and
StreamingLLM's attention-sink rule recomputed from scratch (a one-layer model, whose keys depend on the token only)."""

from __future__ import annotations

import pytest
import torch

from mlcore.inference import DynamicCache, generate
from mlcore.inference.sliding_cache import SlidingWindowCache
from mlcore.model import Transformer, TransformerConfig

from ..model._model_testutils import VOCAB, left_padded_batch, llama_family, randomize_


def _model(**kw) -> Transformer:
    base = dict(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
    base.update(kw)
    return randomize_(Transformer(TransformerConfig(**base)))


def _stepwise(model: Transformer, ids: torch.Tensor, mask: torch.Tensor, cache, prefill: int) -> torch.Tensor:
    """Logits of a prefill of ``prefill`` columns, then one column at a time, as the model tests do."""
    with torch.no_grad():
        steps = [model(ids[:, :prefill], attention_mask=mask[:, :prefill], cache=cache)]
        for t in range(prefill, ids.shape[1]):
            steps.append(model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache))
    return torch.cat(steps, dim=1)


@pytest.mark.parametrize("position", ["rope", "alibi"])
@pytest.mark.parametrize("rollback", [0, 3])
def test_decode_equals_full_forward_of_a_window_model(position, rollback):
    """Prefill longer than the window, then decode: every step equals the full forward within 1e-4."""
    model = _model(sliding_window=4, position=position)
    ids, mask = left_padded_batch([16, 11], 16)
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
    cache = SlidingWindowCache.for_model(model, 2, 16, rollback=rollback)
    before = cache.nbytes()
    inc = _stepwise(model, ids, mask, cache, prefill=9)
    keep = mask.bool()
    assert (inc[keep] - full[keep]).abs().max() < 1e-4
    assert cache.get_seq_length() == 16 and cache.nbytes() == before  # nothing grew
    assert cache.keys[0].shape[2] == 4 + max(rollback - 1, 0)  # the ring: window (+ rollback slack) slots


def test_within_the_window_any_model_is_exact():
    model = _model()  # no window of its own
    ids, mask = left_padded_batch([12, 7], 12)
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
    inc = _stepwise(model, ids, mask, SlidingWindowCache(12), prefill=5)
    assert (inc[mask.bool()] - full[mask.bool()]).abs().max() < 1e-4


def test_layers_share_one_key_index_per_step():
    """All layers get the same key_index object, so AttentionInputs builds one mask per forward."""
    model = _model(n_layers=3, sliding_window=4)
    cache = SlidingWindowCache(4, sinks=1, rope=model.rope)
    seen: list[torch.Tensor] = []
    update = cache.update
    cache.update = lambda i, k, v, idx: (out := update(i, k, v, idx), seen.append(out[2]))[0]
    with torch.no_grad():
        model(torch.arange(6)[None], cache=cache)
        model(torch.tensor([[7]]), cache=cache)
    assert seen[0] is seen[1] is seen[2] and seen[3] is seen[4] is seen[5] and seen[0] is not seen[3]


@pytest.fixture(scope="module")
def mistral():
    return llama_family("mistral", sliding_window=5)


@pytest.mark.parametrize("lengths", [[8], [8, 5, 3]])
def test_greedy_equals_transformers_mistral(mistral, lengths):
    """Sliding window 5, prompt 8 + 20 new tokens: token for token equal to transformers' generate."""
    ids, mask = left_padded_batch(lengths, 8)
    ref = mistral.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=0)
    model = Transformer.from_hf(mistral)
    eos = mistral.generation_config.eos_token_id
    out = generate(model, ids, attention_mask=mask, max_new_tokens=20, cache=SlidingWindowCache(5),
                   eos_token_id=eos, pad_token_id=0)
    assert torch.equal(out, ref)
    assert out.shape[1] == 28 > 5
    if len(lengths) == 1:
        return
    by_name = generate(model, ids, attention_mask=mask, max_new_tokens=20, cache="sliding", eos_token_id=eos,
                       pad_token_id=0)  # the factory's default window is the model's own
    assert torch.equal(by_name, ref)
    # The window matters here: the same weights without it continue differently.
    model.config.sliding_window = None
    for layer in model.layers:
        layer.attn.sliding_window = None
    assert not torch.equal(generate(model, ids, attention_mask=mask, max_new_tokens=20, cache="dynamic",
                                    eos_token_id=eos, pad_token_id=0), ref)


@pytest.mark.parametrize("lengths", [[10], [10, 6]])
def test_greedy_equals_transformers_qwen2_sliding_some_layers(lengths):
    """Qwen2 sliding only its second layer (max_window_layers=1, window 4): the full-attention layer keeps every
    column, so cache="sliding" -- and speculative decoding on it -- equals transformers' generate token for token,
    and each step the full forward."""
    from mlcore.inference import speculative_generate

    hf = llama_family("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=1)
    model = Transformer.from_hf(hf)
    assert model.config.layer_types == ["full_attention", "sliding_attention"]
    ids, mask = left_padded_batch(lengths, 10)
    ref = hf.generate(ids, attention_mask=mask, max_new_tokens=14, do_sample=False, pad_token_id=0)
    out = generate(model, ids, attention_mask=mask, max_new_tokens=14, cache="sliding")
    assert torch.equal(out, ref)
    draft = Transformer.from_hf(llama_family("qwen2", seed=7, num_hidden_layers=1))
    spec = speculative_generate(model, draft, ids, attention_mask=mask, max_new_tokens=14, cache="sliding")
    assert torch.equal(spec, ref)
    cache = SlidingWindowCache.for_model(model, len(lengths), 24, rollback=5)
    assert cache.full_layers == {0} and 0 not in cache.keys and not cache.streaming
    full_mask = torch.cat([mask, torch.ones(len(lengths), 14, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        full = model(ref, attention_mask=full_mask)
    inc = _stepwise(model, ref, full_mask, cache, prefill=10)
    keep = full_mask.bool()
    assert (inc[keep] - full[keep]).abs().max() < 1e-4
    assert cache.keys[1].shape[2] == 4 + 4 and cache.get_seq_length(0) == cache.get_seq_length(1) == 24
    cache.crop(20)
    assert cache.get_seq_length(0) == cache.get_seq_length(1) == 20


def _streaming_reference(model: Transformer, row: list[int], t: int, sinks: int, window: int) -> torch.Tensor:
    """StreamingLLM from scratch: the first ``sinks`` tokens and the last ``window`` columns up to ``t``,
    re-run as one contiguous sequence (positions 0..n-1): the logits of its last token."""
    real = [(c, tok) for c, tok in enumerate(row[:t + 1]) if tok >= 0]
    sink = real[:sinks]
    recent = [(c, tok) for c, tok in real[sinks:] if c > t - window]
    toks = [tok for _, tok in sink + recent]
    with torch.no_grad():
        return model(torch.tensor([toks]))[0, -1]


@pytest.mark.parametrize("position", ["rope", "alibi"])
def test_sinks_follow_streamingllm(position):
    """One layer: the keys of layer 0 depend on the token alone, so re-running the kept tokens contiguously
    is StreamingLLM's cache exactly. Left padding included (a row's sinks are its first real tokens)."""
    sinks, window = 2, 4
    model = _model(n_layers=1, position=position)
    ids, mask = left_padded_batch([14, 9], 14)
    cache = SlidingWindowCache(window, sinks, rope=model.rope)
    inc = _stepwise(model, ids, mask, cache, prefill=3)
    rows = torch.where(mask.bool(), ids, -1).tolist()
    worst = 0.0
    for b, row in enumerate(rows):
        for t in range(3, 14):
            if row[t] >= 0:
                worst = max(worst, (inc[b, t] - _streaming_reference(model, row, t, sinks, window)).abs().max())
    assert worst < 1e-4
    # the sinks were really moved: leaving them at their true positions gives other logits
    if position == "rope":
        stale = _stepwise(model, ids, mask, SlidingWindowCache(window, sinks), prefill=3)
        assert (stale[0, -1] - inc[0, -1]).abs().max() > 1e-3


def test_memory_stays_bounded_past_max_seq_len():
    model = _model(max_seq_len=16)
    cache = SlidingWindowCache.for_model(model, 1, 48, window=6, sinks=2)
    assert cache.streaming
    held = cache.nbytes()
    ids = torch.tensor([[5, 9, 2]])
    with torch.no_grad():
        logits = model(ids, cache=cache)
        for _ in range(3 * 16):
            token = logits[:, -1].argmax(-1, keepdim=True)
            logits = model(token, cache=cache)
            assert torch.isfinite(logits).all()
    assert cache.get_seq_length() == 3 + 48 and cache.nbytes() == held
    out = generate(model, ids, max_new_tokens=48, cache=SlidingWindowCache.for_model(model, 1, 51, window=6))
    assert out.shape == (1, 51)
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(model, ids, max_new_tokens=48, cache=DynamicCache())


def test_learned_positions_cannot_stream():
    model = _model(max_seq_len=8, position="learned")
    cache = SlidingWindowCache.for_model(model, 1, 12, window=4)
    assert not cache.streaming
    with torch.no_grad(), pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 9, dtype=torch.long), cache=cache)


def test_crop_rolls_back_within_the_ring():
    """A 3-token verify step (in place thanks to rollback=3), crop 2 of them, go on: equal to the full forward."""
    model = _model(sliding_window=4)
    ids = torch.randint(0, VOCAB, (1, 14), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids)
        cache = SlidingWindowCache(4, rollback=3)
        model(ids[:, :8], cache=cache)
        wrong = ids[:, 8:11].clone()
        wrong[0, 1:] = (wrong[0, 1:] + 1) % VOCAB  # two rejected draft tokens
        model(wrong, cache=cache)
        cache.crop(-2)
        assert cache.get_seq_length() == 9
        rest = model(ids[:, 9:], cache=cache)
    assert (rest - full[:, 9:]).abs().max() < 1e-4
    small = SlidingWindowCache(4)
    with torch.no_grad():
        model(ids[:, :8], cache=small)
    small.crop(7)  # one column can always be dropped
    with pytest.raises(ValueError, match="rolls back at most 1"):
        small.crop(5)


def test_crops_add_up_against_what_the_ring_overwrote():
    """Two crops of one column each are, together, a crop of two: the second must be refused once the ring has
    overwritten a column its next query needs (it used to pass and silently drop that key), and the refusal
    changes nothing. crop(0) needs no old column at all: it always empties the cache."""
    model = _model(sliding_window=4)
    ids = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(5))
    cache = SlidingWindowCache(4)  # rollback 0: one column
    with torch.no_grad():
        full = model(ids[:, :8])
        model(ids[:, :5], cache=cache)  # column 4 overwrote column 0
        cache.crop(4)  # the query at column 4 needs 1..3: still held
        with pytest.raises(ValueError, match="no longer holds columns before 1"):
            cache.crop(3)  # the query at column 3 would need column 0
        assert cache.get_seq_length() == 4
        rest = model(ids[:, 4:8], cache=cache)  # the refused crop left the cache usable
    assert (rest - full[:, 4:8]).abs().max() < 1e-4
    cache.crop(0)
    assert cache.get_seq_length() == 0
    with torch.no_grad():
        assert (model(ids[:, :8], cache=cache) - full).abs().max() < 1e-4


def test_bad_arguments():
    with pytest.raises(ValueError, match="window"):
        SlidingWindowCache(0)
    with pytest.raises(ValueError, match="sinks"):
        SlidingWindowCache(4, sinks=-1)
    with pytest.raises(ValueError, match="rollback"):
        SlidingWindowCache(4, rollback=1.5)
    with pytest.raises(ValueError, match="sliding_window=4"):
        SlidingWindowCache.for_model(_model(sliding_window=4), 1, 8, window=4, sinks=1)
    cache = SlidingWindowCache(4)
    cache.update(0, torch.zeros(2, 2, 3, 8), torch.zeros(2, 2, 3, 8), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, Hkv, D\)"):
        cache.update(0, torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, 1, 8), torch.zeros(1, 1, dtype=torch.long))


@pytest.mark.cuda
def test_cuda_window_and_sinks():
    model = _model(sliding_window=4).cuda()
    ids, mask = (t.cuda() for t in left_padded_batch([16, 11], 16))
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
    inc = _stepwise(model, ids, mask, SlidingWindowCache.for_model(model, 2, 16), prefill=9)
    assert (inc[mask.bool()] - full[mask.bool()]).abs().max() < 1e-4
    one = _model(n_layers=1).cuda()
    cpu = _stepwise(one.cpu(), ids.cpu(), mask.cpu(), SlidingWindowCache(4, 2, rope=one.rope), prefill=3)
    one.cuda()
    gpu = _stepwise(one, ids, mask, SlidingWindowCache(4, 2, rope=one.rope), prefill=3)
    assert (gpu.cpu()[mask.bool().cpu()] - cpu[mask.bool().cpu()]).abs().max() < 1e-4
