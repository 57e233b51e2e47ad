"""Accounting formulas against counted reality: parameters of real models, FLOPs counted by
torch.utils.flop_counter on transformers' own forward/backward, and KV tensors held by transformers' cache."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mlcore.model import Transformer, TransformerConfig, accounting
from mlcore.model.hf_convert import config_from_hf

from ._model_testutils import VOCAB, gpt2, llama_family

CONFIGS = {
    "llama_gqa_untied": dict(n_kv_heads=2, tie_embeddings=False),
    "mqa_bias": dict(n_kv_heads=1, qkv_bias=True, out_bias=True, mlp_bias=True),
    "gpt2_style": dict(norm="layernorm", mlp="gelu", activation="gelu_tanh", position="learned", qkv_bias=True,
                       out_bias=True, mlp_bias=True),
    "alibi": dict(position="alibi", n_kv_heads=4),
}


def _cfg(**kw) -> TransformerConfig:
    return TransformerConfig(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, max_seq_len=64, **kw)


def _hf_cfg(hf) -> TransformerConfig:
    d = hf.config.to_dict()
    d["architectures"] = [type(hf).__name__]
    return config_from_hf(d)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parameter_count_by_component(name):
    cfg = _cfg(**CONFIGS[name])
    model = Transformer(cfg)
    counts = accounting.count_parameters(cfg)
    assert counts.total == sum(p.numel() for p in model.parameters())
    by_prefix = {"attention": ".attn.", "mlp": ".mlp.", "norms": "norm."}
    named = dict(model.named_parameters())
    for comp, prefix in by_prefix.items():
        assert getattr(counts, comp) == sum(p.numel() for n, p in named.items() if prefix in n), comp
    assert counts.embedding == named["embed.weight"].numel()


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_parameter_count_matches_transformers(kind):
    hf = gpt2() if kind == "gpt2" else llama_family(kind, tie_word_embeddings=False)
    assert accounting.count_parameters(_hf_cfg(hf)).total == sum(p.numel() for p in hf.parameters())


def _counted_flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_prefill_flops_match_flop_counter(kind):
    hf = gpt2() if kind == "gpt2" else llama_family(kind, num_key_value_heads=1)
    cfg = _hf_cfg(hf)
    B, T = 2, 24
    ids = torch.randint(0, VOCAB, (B, T))
    with torch.no_grad():
        counted = _counted_flops(lambda: hf(ids))
    assert counted == accounting.prefill_flops(cfg, T, batch=B)


def test_decode_flops_match_flop_counter():
    hf = llama_family("llama")
    cfg = _hf_cfg(hf)
    B, T0 = 3, 10
    with torch.no_grad():
        out = hf(torch.randint(0, VOCAB, (B, T0)), use_cache=True)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        counted = _counted_flops(lambda: hf(torch.randint(0, VOCAB, (B, 1)), cache=cache, use_cache=True))
    assert counted == accounting.decode_flops_per_token(cfg, T0 + 1, batch=B)


def test_training_flops_are_three_forwards():
    hf = llama_family("llama").train()
    cfg = _hf_cfg(hf)
    B, T = 2, 16
    ids = torch.randint(0, VOCAB, (B, T))

    def step():
        hf(ids).logits.float().pow(2).mean().backward()

    counted = _counted_flops(step)
    assert counted == accounting.training_flops(cfg, B * T, context_len=T)
    # the 6N rule alone, without the attention term, undercounts by exactly 3x the attention FLOPs
    assert counted - accounting.training_flops(cfg, B * T) == 3 * B * T * accounting.attention_flops_per_token(cfg, T)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_cache_bytes_match_transformers_cache(dtype):
    hf = llama_family("llama", num_key_value_heads=1).to(dtype)
    cfg = _hf_cfg(hf)
    B, T = 3, 17
    with torch.no_grad():
        out = hf(torch.randint(0, VOCAB, (B, T)), use_cache=True)
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    measured = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert measured == accounting.kv_cache_bytes(cfg, B, T, dtype)


def test_real_sizes_written_by_hand():
    llama2_7b = TransformerConfig(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, d_ff=11008,
                                  max_seq_len=4096, tie_embeddings=False)
    # Meta's published count for Llama-2-7B is 6,738,415,616 parameters
    assert accounting.count_parameters(llama2_7b).total == 6_738_415_616
    # 2 * 32 layers * 4096 * 2 bytes = 512 KiB of fp16 KV cache per token
    assert accounting.kv_cache_bytes(llama2_7b, 1, 1, torch.float16) == 524_288
    with pytest.raises(ValueError, match="batch"):
        accounting.kv_cache_bytes(llama2_7b, 0, 10)
