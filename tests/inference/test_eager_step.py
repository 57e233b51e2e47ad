"""The eager decode step (mlcore.inference.eager_step): the forward's logits bit for bit, and the forward wherever
the step does not apply."""

from __future__ import annotations

import pytest
import torch

from mlcore.inference import StaticCache, generate
from mlcore.inference.eager_step import EagerDecodeStep
from mlcore.inference.hf import hf_generate
from mlcore.model import Transformer, TransformerConfig

from ._gen_testutils import pair

BASE = dict(vocab_size=96, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=96, max_seq_len=64)
CONFIGS = {
    "gqa": {},
    "mqa-qkv-bias": dict(n_kv_heads=1, qkv_bias=True, out_bias=True, mlp_bias=True),
    "mha-untied": dict(n_kv_heads=4, tie_embeddings=False),
    "interleaved-rope": dict(rope_interleaved=True),
    "partial-rotary": dict(partial_rotary_factor=0.5),
    "layernorm-gelu-gate": dict(norm="layernorm", activation="gelu_tanh"),
    "llama3-rope": dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
}


def _model(name: str, dtype: torch.dtype, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(TransformerConfig(**{**BASE, **CONFIGS[name]})).eval()
    with torch.no_grad():  # non-trivial norm gains and biases, so a skipped or reordered op shows in the bits
        for n, p in model.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(n))) * 0.1)
    return model.to(dtype)


def _decode_both(model: Transformer, prompt: torch.Tensor, steps: int):
    """Prefill two StaticCaches alike, then decode the same tokens through the forward and through the step."""
    B, T = prompt.shape
    caches = [StaticCache(T + steps), StaticCache(T + steps)]
    with torch.no_grad():
        ref = [model(prompt, cache=caches[0], logits_to_keep=1)]
        got = [model(prompt, cache=caches[1], logits_to_keep=1)]
        step = EagerDecodeStep.for_generation(model, caches[1], padded=False)
        assert step is not None
        for _ in range(steps):
            token = ref[-1].argmax(-1)  # (B, 1)
            ref.append(model(token, cache=caches[0], logits_to_keep=1, validate=False))
            got.append(step(token))
    return ref, got, caches


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("batch", [1, 3])
def test_step_logits_and_cache_equal_the_forward_bit_for_bit(name, dtype, batch):
    model = _model(name, dtype)
    prompt = torch.randint(0, BASE["vocab_size"], (batch, 7), generator=torch.Generator().manual_seed(batch))
    ref, got, (c_ref, c_got) = _decode_both(model, prompt, steps=9)
    for i, (r, g) in enumerate(zip(ref, got)):
        assert r.shape == g.shape == (batch, 1, BASE["vocab_size"]) and g.dtype == dtype
        assert torch.equal(r, g), f"step {i}: max diff {(r.float() - g.float()).abs().max()}"
    assert c_got.get_seq_length() == c_ref.get_seq_length() == 16
    assert torch.equal(c_got.index, c_ref.index)
    for layer in c_ref.keys:
        assert torch.equal(c_got.keys[layer], c_ref.keys[layer])
        assert torch.equal(c_got.values[layer], c_ref.values[layer])


@pytest.mark.parametrize("scheme", ["int8", "int4", "nf4"])
def test_quantized_layers_step_as_the_forward_does(scheme):
    """Stacked quantized q/k/v and gate/up (``concat_out_features``) are what the step calls too; a scheme whose
    layers the forward cannot stack runs them one by one, through the forward."""
    from mlcore.quant import quantize_model

    options = {"group_size": 32} if scheme == "int4" else {}  # groups that divide the 64-wide rows
    model = quantize_model(_model("gqa", torch.float32), scheme, **options)
    assert type(model.layers[0].attn.q_proj).__name__ == "QuantizedLinear"
    prompt = torch.randint(0, BASE["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(4))
    cache = StaticCache(9)
    with torch.no_grad():
        model(prompt, cache=cache, logits_to_keep=1)
        stacks = model.layers[0].attn._stacked_qkv() is not None
    if not stacks:
        assert EagerDecodeStep.for_generation(model, cache, padded=False) is None
        return
    ref, got, _ = _decode_both(model, prompt, steps=6)
    assert all(torch.equal(r, g) for r, g in zip(ref, got))


def test_lora_wrapped_layers_are_left_to_the_forward():
    from mlcore.finetune import LoraConfig, apply_lora

    model = apply_lora(_model("gqa", torch.float32), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "gate_proj"]),
                       generator=torch.Generator().manual_seed(0), verbose=False).eval()
    cache = StaticCache(12)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]), cache=cache, logits_to_keep=1)
        assert EagerDecodeStep.for_generation(model, cache, padded=False) is None


def _counting(monkeypatch) -> list[int]:
    calls = [0]
    original = EagerDecodeStep.__call__

    def counted(self, token):
        calls[0] += 1
        return original(self, token)

    monkeypatch.setattr(EagerDecodeStep, "__call__", counted)
    return calls


def test_generate_decodes_through_the_step_with_the_tokens_of_transformers(monkeypatch):
    hf, model = pair("llama")
    calls = _counting(monkeypatch)
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(3))
    got = generate(model, ids, max_new_tokens=8, cache="static")
    assert calls[0] == 7  # every decode step (the prefill's logits give the first token)
    ref = hf_generate(hf, ids, max_new_tokens=8)  # greedy, no EOS (the model's config names one)
    assert torch.equal(got, ref)


@pytest.mark.parametrize("case", ["padded", "dynamic cache", "hook", "sliding window", "learned positions",
                                  "training", "sdpa backend"])
def test_the_forward_runs_where_the_step_does_not_apply(monkeypatch, case):
    hf, model = pair("mistral" if case == "sliding window" else "gpt2" if case == "learned positions" else "llama")
    model = Transformer.from_hf(hf).eval()  # a copy of its own: the cases change it
    calls = _counting(monkeypatch)
    hook_calls = [0]
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(3))
    kwargs: dict = {"cache": "static"}
    if case == "padded":
        kwargs["attention_mask"] = torch.tensor([[0, 0] + [1] * 7, [1] * 9])
    elif case == "dynamic cache":
        kwargs["cache"] = "dynamic"
    elif case == "hook":
        model.layers[1].mlp.register_forward_hook(lambda *a: hook_calls.__setitem__(0, hook_calls[0] + 1))
    elif case == "training":
        model.train()
    elif case == "sdpa backend":
        model.layers[1].attn.backend = "torch"  # one layer is enough to leave the step to the forward
    out = generate(model, ids, max_new_tokens=6, **kwargs)
    assert calls[0] == 0 and out.shape == (2, 15)
    if case == "hook":
        assert hook_calls[0] == 6  # the prefill and every decode step called the hooked module


def test_a_weight_edited_between_calls_reaches_the_next_generation():
    model = Transformer.from_hf(pair("llama")[0]).eval()
    ids = torch.randint(0, 128, (1, 9), generator=torch.Generator().manual_seed(5))
    first = generate(model, ids, max_new_tokens=8)
    with torch.no_grad():
        model.layers[0].mlp.down_proj.weight.mul_(-3.0)
        model.layers[1].attn.k_proj.weight.add_(0.5)
    edited = generate(model, ids, max_new_tokens=8)
    model.layers[0].register_forward_pre_hook(lambda *a: None)  # a hook: the plain forward, as the reference
    assert torch.equal(edited, generate(model, ids, max_new_tokens=8))
    assert not torch.equal(first, edited)  # the edit changed the output: the comparison above can fail


def test_a_full_cache_is_refused_and_left_as_it_was():
    model = _model("gqa", torch.float32)
    prompt = torch.randint(0, BASE["vocab_size"], (1, 5), generator=torch.Generator().manual_seed(0))
    cache = StaticCache(6)
    with torch.no_grad():
        model(prompt, cache=cache, logits_to_keep=1)
        step = EagerDecodeStep.for_generation(model, cache, padded=False)
        step(torch.tensor([[1]]))
        before = [t.clone() for t in (*cache.keys.values(), cache.index)]
        with pytest.raises(ValueError, match="StaticCache is full"):
            step(torch.tensor([[2]]))
    assert cache.get_seq_length() == 6
    assert all(torch.equal(a, b) for a, b in zip(before, (*cache.keys.values(), cache.index)))
