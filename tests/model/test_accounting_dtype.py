"""kv_cache_bytes takes dtype names as well as torch dtypes, and refuses anything else by name."""

from __future__ import annotations

import pytest
import torch

from mlcore.model import accounting

from ._model_testutils import VOCAB, llama_family
from .test_accounting import _hf_cfg


@pytest.mark.parametrize("name", ["bfloat16", "bf16", "torch.bfloat16", "BF16"])
def test_dtype_name_matches_transformers_cache(name):
    """A bf16 HF model's real cache holds exactly the bytes the name-based call predicts."""
    hf = llama_family("llama", num_key_value_heads=1).to(torch.bfloat16)
    cfg = _hf_cfg(hf)
    B, T = 2, 9
    with torch.no_grad():
        out = hf(torch.randint(0, VOCAB, (B, T)), use_cache=True)
    measured = sum(t.numel() * t.element_size() for layer in out.past_key_values.layers
                   for t in (layer.keys, layer.values))
    assert measured == accounting.kv_cache_bytes(cfg, B, T, name)
    assert accounting.kv_cache_bytes(cfg, B, T, name) == accounting.kv_cache_bytes(cfg, B, T, torch.bfloat16)


@pytest.mark.parametrize(("name", "dtype"), [("float16", torch.float16), ("fp16", torch.float16),
                                             ("half", torch.float16), ("fp32", torch.float32),
                                             ("float32", torch.float32), ("int8", torch.int8)])
def test_names_resolve_to_torch_dtypes(name, dtype):
    assert accounting.resolve_dtype(name) is dtype
    hf = llama_family("llama", num_key_value_heads=1)
    cfg = _hf_cfg(hf)
    # the bytes of a real (K, V) pair of that dtype per layer, built with torch, are what the formula counts
    k = torch.zeros(3, cfg.n_kv_heads, 5, cfg.head_dim, dtype=dtype)
    assert accounting.kv_cache_bytes(cfg, 3, 5, name) == 2 * cfg.n_layers * k.numel() * k.element_size()


@pytest.mark.parametrize("bad", ["float17", "", 16, None, torch.zeros(1)])
def test_unknown_dtype_is_a_value_error_naming_it(bad):
    cfg = _hf_cfg(llama_family("llama", num_key_value_heads=1))
    with pytest.raises(ValueError, match=r"dtype must be a torch.dtype or a dtype name"):
        accounting.kv_cache_bytes(cfg, 1, 1, bad)


@pytest.mark.parametrize(("kwargs", "name"), [({"batch": "2"}, "batch"), ({"seq_len": 2.0}, "seq_len"),
                                              ({"batch": True}, "batch")])
def test_non_int_sizes_are_value_errors(kwargs, name):
    cfg = _hf_cfg(llama_family("llama", num_key_value_heads=1))
    args = {"batch": 1, "seq_len": 1, **kwargs}
    with pytest.raises(ValueError, match=rf"{name} must be a positive int"):
        accounting.kv_cache_bytes(cfg, args["batch"], args["seq_len"])


def test_summary_accepts_a_dtype_name():
    cfg = _hf_cfg(llama_family("llama", num_key_value_heads=1))
    assert accounting.summary(cfg, dtype="bf16") == accounting.summary(cfg, dtype=torch.bfloat16)


@pytest.mark.parametrize(("call", "name"), [
    (lambda c: accounting.prefill_flops(c, 10, batch=-1), "batch"),            # was -721920 FLOPs
    (lambda c: accounting.prefill_flops(c, 2.5), "seq_len"),                    # was a fractional count
    (lambda c: accounting.prefill_flops(c, 0), "seq_len"),                      # blamed context_len
    (lambda c: accounting.decode_flops_per_token(c, 5, batch=0), "batch"),      # was 0
    (lambda c: accounting.training_flops(c, -5), "n_tokens"),                   # was negative
    (lambda c: accounting.training_flops(c, 5, context_len=0), "context_len"),  # silently left attention out
    (lambda c: accounting.flops_per_token(c, True), "context_len"),
    (lambda c: accounting.flops_per_token(c, "8"), "context_len"),              # was a TypeError from '<='
])
def test_flop_counts_refuse_bad_sizes_by_name(call, name):
    cfg = _hf_cfg(llama_family("llama", num_key_value_heads=1))
    with pytest.raises(ValueError, match=rf"{name} must be a (positive|non-negative) int"):
        call(cfg)


def test_accounting_needs_a_config():
    with pytest.raises(TypeError, match="config must be a TransformerConfig"):
        accounting.count_parameters({"vocab_size": 10})  # was AttributeError: 'dict' object has no attribute
