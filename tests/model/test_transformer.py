"""The model on its own: KV-cache threading, attention backends, config round trip, tied weights."""

from __future__ import annotations

import pytest
import torch

from mlcore.inference import DynamicCache
from mlcore.model import Transformer, TransformerConfig

from ._model_testutils import VOCAB, left_padded_batch, randomize_


def _cfg(**kw) -> TransformerConfig:
    base = dict(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
    base.update(kw)
    return TransformerConfig(**base)


@pytest.mark.parametrize("kw", [dict(), dict(position="learned", norm="layernorm", mlp="gelu",
                                             activation="gelu_tanh"),
                                dict(position="alibi"), dict(sliding_window=3)])
def test_cached_decoding_equals_full_forward(kw):
    model = randomize_(Transformer(_cfg(**kw)))
    ids, mask = left_padded_batch([14, 9], 14)
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
        cache = DynamicCache()
        steps = [model(ids[:, :10], attention_mask=mask[:, :10], cache=cache)]
        for t in range(10, 14):
            steps.append(model(ids[:, t:t + 1], attention_mask=mask[:, : t + 1], cache=cache))
    inc = torch.cat(steps, dim=1)
    keep = mask.bool()
    assert (inc[keep] - full[keep]).abs().max() < 1e-4
    assert cache.get_seq_length() == 14


def test_cache_counts_toward_max_length():
    model = Transformer(_cfg(max_seq_len=8))
    cache = DynamicCache()
    with torch.no_grad():
        model(torch.zeros(1, 6, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="cache 6"):
            model(torch.zeros(1, 3, dtype=torch.long), cache=cache)


@pytest.mark.parametrize("backend", ["torch", "flash"])
def test_attention_backends_agree(backend):
    naive = randomize_(Transformer(_cfg(sliding_window=5)))
    other = Transformer(_cfg(sliding_window=5, attn_backend=backend))
    other.load_state_dict(naive.state_dict())
    ids, mask = left_padded_batch([20, 12], 20)
    with torch.no_grad():
        a, b = naive(ids, attention_mask=mask), other.eval()(ids, attention_mask=mask)
    keep = mask.bool()
    assert (a[keep] - b[keep]).abs().max() < 1e-4


def test_tied_head_shares_the_embedding_and_trains():
    model = Transformer(_cfg(tie_embeddings=True, dropout=0.1)).train()
    assert model.lm_head.weight is model.embed.weight
    ids = torch.randint(0, VOCAB, (2, 12))
    logits = model(ids)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert abs(loss.item() - torch.log(torch.tensor(float(VOCAB))).item()) < 0.5  # near-uniform at init


def test_config_round_trip_and_unknown_keys():
    cfg = _cfg(rope_scaling={"rope_type": "linear", "factor": 2.0}, qkv_bias=True)
    assert TransformerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="n_embd"):
        TransformerConfig.from_dict({**cfg.to_dict(), "n_embd": 3})
    with pytest.raises(ValueError, match="attn_backend"):
        _cfg(attn_backend="cudnn")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["naive", "torch"])
def test_cuda_logits_equal_cpu_logits(backend):
    cpu = randomize_(Transformer(_cfg(attn_backend=backend)))
    gpu = Transformer(_cfg(attn_backend=backend)).cuda().eval()
    gpu.load_state_dict(cpu.state_dict())
    ids, mask = left_padded_batch([16, 10], 16)
    with torch.no_grad():
        a = cpu(ids, attention_mask=mask)
        b = gpu(ids.cuda(), attention_mask=mask.cuda()).cpu()
    keep = mask.bool()
    assert (a[keep] - b[keep]).abs().max() < 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_norms_match_torch_and_transformers(dtype):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from mlcore.model import LayerNorm, RMSNorm

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 7, 48, generator=g) * 3 + 1).to(dtype)
    w, b = torch.randn(48, generator=g).to(dtype), torch.randn(48, generator=g).to(dtype)
    ln = LayerNorm(48, 1e-5).to(dtype)
    rms, hf_rms = RMSNorm(48, 1e-6).to(dtype), LlamaRMSNorm(48, eps=1e-6).to(dtype)
    with torch.no_grad():
        ln.weight.copy_(w), ln.bias.copy_(b), rms.weight.copy_(w), hf_rms.weight.copy_(w)
        tol = 1e-5 if dtype == torch.float32 else 0.0  # half precision: one rounding, bit for bit
        torch.testing.assert_close(ln(x), torch.nn.functional.layer_norm(x, (48,), w, b, 1e-5), atol=tol, rtol=0)
        torch.testing.assert_close(rms(x), hf_rms(x), atol=tol, rtol=0)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = Transformer(_cfg(dropout=0.0)).train()
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.gradient_checkpointing_enable(enable)
        model(ids).float().logsumexp(-1).mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
