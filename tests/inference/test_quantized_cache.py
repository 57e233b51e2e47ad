"""QuantizedCache: its int8 codes against mlcore.quant, its memory against DynamicCache, and the logit cost of
a cached decode of the project's trained model against its full forward (measured, then bounded)."""

from __future__ import annotations

import pytest
import torch

from mlcore.inference import DynamicCache, generate
from mlcore.inference.quantized_cache import QuantizedCache, dequantize_per_token, quantize_per_token
from mlcore.model import Transformer, TransformerConfig
from mlcore.quant import dequantize, quantize

from ..model._model_testutils import VOCAB, left_padded_batch, randomize_


def test_codes_and_scales_equal_mlcore_quant():
    x = torch.randn(2, 3, 5, 16, generator=torch.Generator().manual_seed(0)) * 3
    x[0, 0, 0] = 0.0  # an all-zero token
    codes, scales = quantize_per_token(x)
    ref = quantize(x, "int8")  # symmetric, one scale per row of the last dimension
    assert torch.equal(codes.reshape(-1, 16), ref.data) and torch.equal(scales.reshape(-1), ref.scales.reshape(-1))
    back = dequantize_per_token(codes, scales, torch.float32)
    assert torch.equal(back, dequantize(ref))
    assert ((back - x).abs() <= scales[..., None] / 2 + 1e-6).all()  # half a step at most


def _decode(model, ids, cache, prefill):
    with torch.no_grad():
        steps = [model(ids[:, :prefill], cache=cache)]
        for t in range(prefill, ids.shape[1]):
            steps.append(model(ids[:, t:t + 1], cache=cache))
    return torch.cat(steps, dim=1)


@pytest.fixture(scope="module")
def trained():
    from mlcore.training import load_tiny
    from mlcore.training.assets import tiny_heldout_text

    model, tok = load_tiny("target")
    text = tiny_heldout_text()
    rows = [tok.encode(text[i:i + 3000])[:80] for i in (0, 6000)]
    return model, torch.tensor(rows)


def test_memory_and_logit_cost_on_the_trained_model(trained):
    """Measured (2 held-out rows, prefill 32 + 48 decode steps): max |logit error| 0.041 (logit std 2.7), mean
    0.0023, max KL(full || int8) 9e-5 nats, top-1 agreement 100%; memory 3.5x less than the fp32 DynamicCache."""
    model, ids = trained
    with torch.no_grad():
        full = model(ids)
    q_cache, ref_cache = QuantizedCache.for_model(model, 2, ids.shape[1]), DynamicCache()
    inc = _decode(model, ids, q_cache, prefill=32)[:, 32:]
    exact = _decode(model, ids, ref_cache, prefill=32)[:, 32:]
    full = full[:, 32:]
    err = (inc - full).abs()
    kl = (full.softmax(-1) * (full.log_softmax(-1) - inc.log_softmax(-1))).sum(-1)
    agree = (inc.argmax(-1) == full.argmax(-1)).float().mean()
    assert (exact - full).abs().max() < 1e-4  # the reference path itself is exact
    assert err.max() < 0.15 and err.mean() < 0.01 and kl.max() < 1e-3 and agree >= 0.97
    assert err.max() > 1e-4  # int8 is really in the path
    # memory: per token and KV head, D int8 codes + a 4-byte scale, for K and V; plus the 8-byte index per column
    c = model.config
    B, T = ids.shape
    assert q_cache.nbytes() == 2 * c.n_layers * B * c.n_kv_heads * T * (c.head_dim + 4) + 8 * B * T
    fp32 = ref_cache.nbytes()
    bf16 = (fp32 - 8 * B * T) // 2 + 8 * B * T
    assert fp32 / q_cache.nbytes() > 3.4 and bf16 / q_cache.nbytes() > 1.7


def _model(**kw) -> Transformer:
    base = dict(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
    base.update(kw)
    return randomize_(Transformer(TransformerConfig(**base)))


def test_growth_padding_and_one_mask_per_step():
    """A small cache grows by doubling and gives the same logits as a preallocated one; left padding works;
    every layer of a step gets the same key-index tensor."""
    model = _model(n_layers=3)
    ids, mask = left_padded_batch([14, 9], 14)
    outs = []
    for cache in (QuantizedCache(capacity=3), QuantizedCache.for_model(model, 2, 14)):
        seen = []
        update = cache.update
        cache.update = lambda i, k, v, idx, _u=update, _s=seen: (out := _u(i, k, v, idx), _s.append(out[2]))[0]
        with torch.no_grad():
            steps = [model(ids[:, :6], attention_mask=mask[:, :6], cache=cache)]
            for t in range(6, 14):
                steps.append(model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache))
        outs.append(torch.cat(steps, 1))
        assert all(seen[i] is seen[i + 1] is seen[i + 2] for i in range(0, len(seen), 3))
    assert cache.get_seq_length() == 14 and torch.equal(outs[0], outs[1])
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
    keep = mask.bool()
    assert (outs[0][keep] - full[keep]).abs().max() < 0.5  # random weights: large logits, still int8-close
    assert generate(model, ids, attention_mask=mask, max_new_tokens=3, cache="int8").shape == (2, 17)  # by name


def test_crop_rolls_back():
    model = _model()
    ids = torch.randint(0, VOCAB, (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cache = QuantizedCache()
        model(ids[:, :6], cache=cache)
        want = model(ids[:, 6:], cache=cache)
        cache.crop(6)
        model((ids[:, 6:9] + 1) % VOCAB, cache=cache)  # rejected tokens, then rolled back
        cache.crop(-3)
        again = model(ids[:, 6:], cache=cache)
    assert cache.get_seq_length() == 10 and torch.equal(again, want)
    with pytest.raises(ValueError, match="cannot crop"):
        cache.crop(11)


def test_bad_arguments():
    with pytest.raises(ValueError, match="capacity"):
        QuantizedCache(0)
    cache = QuantizedCache()
    cache.update(0, torch.zeros(1, 2, 3, 8), torch.zeros(1, 2, 3, 8), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, Hkv, D\)"):
        cache.update(0, torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4), torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="index"):
        cache.update(0, torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, dtype=torch.long))


@pytest.mark.cuda
def test_cuda_decode_close_to_full_forward():
    model = _model().cuda()
    ids, mask = (t.cuda() for t in left_padded_batch([14, 9], 14))
    cache = QuantizedCache.for_model(model, 2, 14)
    assert cache.codes_k[0].is_cuda
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
        steps = [model(ids[:, :6], attention_mask=mask[:, :6], cache=cache)]
        for t in range(6, 14):
            steps.append(model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache))
    inc = torch.cat(steps, 1)
    keep = mask.bool()
    assert (inc[keep] - full[keep]).abs().max() < 0.5
