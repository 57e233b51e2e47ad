"""QLoRA = LoRA over mlcore's NF4 ``QuantizedLinear``: forward equals dequantize-then-linear plus LoRA, gradients
reach A and B only, and on the same NF4 weights it matches peft + bitsandbytes' ``Linear4bit`` QLoRA."""

from __future__ import annotations

import copy
import types
import warnings

import bitsandbytes.functional as bnbf
import peft
import pytest
import torch
import torch.nn.functional as F
import transformers
from torch import nn

from mlcore.finetune import (
    LoraConfig,
    LoraLinear,
    apply_lora,
    dequantize_lora_bases,
    lora_layers,
    merge_lora,
    prepare_qlora,
    trainable_parameters,
)
from mlcore.quant import QuantizedLinear, dequantize, from_bitsandbytes, quantize
from tests.finetune._lora_testutils import (
    logits_of,
    make,
    peft_layers,
    randomize_lora_,
    tiny_llama,
    token_ids,
)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def copy_adapters(ours: dict, theirs: dict) -> None:
    """Give PEFT's layers ``theirs`` the A and B of mlcore's ``ours`` (same names)."""
    with torch.no_grad():
        for name, m in ours.items():
            theirs[name].lora_A["default"].weight.copy_(m.lora_A.weight)
            theirs[name].lora_B["default"].weight.copy_(m.lora_B.weight)


def test_lora_over_nf4_equals_dequantize_then_linear_plus_lora() -> None:
    g = torch.Generator().manual_seed(0)
    dense = nn.Linear(128, 96)
    with torch.no_grad():
        dense.weight.copy_(torch.randn(96, 128, generator=g) * 0.05)
    qt = quantize(dense.weight.detach(), "nf4", blocksize=64, double_quant=True)
    layer = LoraLinear(QuantizedLinear(qt, dense.bias), 8, 16, use_rslora=True)
    with torch.no_grad():
        layer.lora_B.weight.copy_(torch.randn(96, 8, generator=g) * 0.1)
    x = torch.randn(2, 5, 128, generator=g, requires_grad=True)
    y = layer(x)
    a, b = layer.lora_A.weight, layer.lora_B.weight
    ref = F.linear(x, dequantize(qt), dense.bias) + (x @ a.T @ b.T) * (16 / 8 ** 0.5)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    assert a.grad is not None and b.grad is not None and x.grad is not None
    assert not any(t.requires_grad for t in layer.base_layer.buffers())


@pytest.mark.parametrize("kind", ["llama", "mlcore"])
def test_prepare_qlora_equals_lora_on_the_dequantized_model(kind: str) -> None:
    base = make(kind)
    config = LoraConfig(4, 8, "all-linear")
    qlora = prepare_qlora(copy.deepcopy(base), config, verbose=False)
    layers = lora_layers(qlora)
    assert len(layers) == 2 * 7 and all(isinstance(m.base_layer, QuantizedLinear) for m in layers.values())
    assert all(m.base_layer.quant_metadata["scheme"] == "nf4" and m.base_layer.quant_metadata["nested_blocksize"]
               for m in layers.values())
    assert isinstance(qlora.lm_head, nn.Linear)  # the output head stays in full precision
    randomize_lora_(qlora)
    # reference: each target's weight replaced by its dequantized NF4 value, then plain LoRA with the same A, B
    dense = copy.deepcopy(base)
    with torch.no_grad():
        for name, m in layers.items():
            dense.get_submodule(name).weight.copy_(m.base_layer.dequantized_weight())
    dense = apply_lora(dense, config, verbose=False)
    with torch.no_grad():
        for name, m in lora_layers(dense).items():
            m.lora_A.weight.copy_(layers[name].lora_A.weight)
            m.lora_B.weight.copy_(layers[name].lora_B.weight)
    ids = token_ids()
    out_q, out_d = logits_of(qlora.train(), ids), logits_of(dense.train(), ids)
    torch.testing.assert_close(out_q, out_d, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert (out_q - logits_of(base, ids)).abs().max() > 1e-2
    out_q.square().mean().backward()
    out_d.square().mean().backward()
    for name, m in layers.items():
        torch.testing.assert_close(m.lora_B.weight.grad, lora_layers(dense)[name].lora_B.weight.grad,
                                   rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(m.lora_A.weight.grad, lora_layers(dense)[name].lora_A.weight.grad,
                                   rtol=1e-4, atol=1e-6)
    assert trainable_parameters(qlora)[0] == trainable_parameters(dense)[0]
    assert trainable_parameters(qlora)[1] == trainable_parameters(dense)[1]
    # merging: dequantize the bases, fold B A in, plain model with the same logits
    with torch.no_grad():
        merged = merge_lora(dequantize_lora_bases(qlora), unload=True)
        torch.testing.assert_close(logits_of(merged.eval(), ids), out_d, rtol=1e-4, atol=1e-4)


def test_prepare_qlora_bf16_compute() -> None:
    model = prepare_qlora(tiny_llama(), LoraConfig(4, 8, TARGETS), compute_dtype=torch.bfloat16, verbose=False)
    layer = lora_layers(model)["model.layers.0.self_attn.q_proj"]
    assert layer.lora_A.weight.dtype == torch.float32 and model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert layer.base_layer.weight_data.dtype == torch.uint8
    logits = logits_of(model.train(), token_ids())
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    logits.float().square().mean().backward()
    assert layer.lora_A.weight.grad is not None and layer.lora_A.weight.grad.dtype == torch.float32


def _bnb_llama(tmp_path, base: nn.Module) -> nn.Module:
    base.save_pretrained(str(tmp_path))
    q = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                        bnb_4bit_compute_dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.LlamaForCausalLM.from_pretrained(str(tmp_path), quantization_config=q,
                                                             device_map="cpu", dtype=torch.float32)


def _as_mlcore(param: torch.Tensor) -> QuantizedLinear:
    """bitsandbytes' Params4bit -> mlcore QuantizedLinear on the very same NF4 codes and scales."""
    qs = param.quant_state
    state2 = getattr(qs, "state2", None) if getattr(qs, "nested", False) else None
    plain = types.SimpleNamespace(quant_type=qs.quant_type, blocksize=qs.blocksize, shape=qs.shape, dtype=qs.dtype,
                                  code=qs.code, offset=getattr(qs, "offset", None), state2=state2,
                                  absmax=qs.absmax if state2 is not None else qs.absmax.float())
    qt = from_bitsandbytes(param.data, plain)
    torch.testing.assert_close(dequantize(qt), bnbf.dequantize_4bit(param.data, qs).float(), rtol=0, atol=0)
    return QuantizedLinear(qt)


def test_matches_peft_and_bitsandbytes_qlora_on_the_same_nf4_weights(tmp_path) -> None:
    # in_features all multiples of 64: bitsandbytes' CPU 4-bit path (0.50) mis-reads weights whose rows are not
    # a whole number of blocks (down_proj 96 -> 64 dequantizes wrongly and its forward raises a reshape error).
    # The weights are read out of bitsandbytes before its first forward, which repacks them for the CPU kernel.
    base = tiny_llama(intermediate_size=128)
    spec = dict(r=4, lora_alpha=8, target_modules=TARGETS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(_bnb_llama(tmp_path, copy.deepcopy(base)), peft.LoraConfig(**spec))
    their_layers = peft_layers(theirs)
    assert all("Linear4bit" in type(m).__name__ for m in their_layers.values())
    ours = copy.deepcopy(base)
    for name, m in their_layers.items():
        parent, _, child = name.rpartition(".")
        setattr(ours.get_submodule(parent), child, _as_mlcore(m.base_layer.weight))
    ours = apply_lora(ours, LoraConfig(**spec), verbose=False)
    randomize_lora_(ours)
    copy_adapters(lora_layers(ours), their_layers)
    ids = token_ids()
    mine, ref = logits_of(ours.train(), ids), theirs.train()(ids).logits
    torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-4)
    mine.square().mean().backward()
    ref.square().mean().backward()
    for name, m in lora_layers(ours).items():
        torch.testing.assert_close(m.lora_B.weight.grad, their_layers[name].lora_B["default"].weight.grad,
                                   rtol=1e-3, atol=1e-6)
    assert trainable_parameters(ours) == theirs.get_nb_trainable_parameters()


def test_prepare_qlora_bad_input() -> None:
    with pytest.raises(ValueError, match="mlcore LoraConfig"):
        prepare_qlora(tiny_llama(), {"r": 4})
    with pytest.raises(ValueError, match="compute_dtype must be"):
        prepare_qlora(tiny_llama(), LoraConfig(4, 8, TARGETS), compute_dtype=torch.int8)
    with pytest.raises(ValueError, match="has no gradient_checkpointing_enable"):
        prepare_qlora(torch.nn.Sequential(torch.nn.Linear(8, 8)), LoraConfig(4, 8, ["0"]), gradient_checkpointing=True)
    assert prepare_qlora(make("mlcore"), LoraConfig(4, 8, TARGETS), gradient_checkpointing=True,
                         verbose=False).gradient_checkpointing
    model = prepare_qlora(tiny_llama(), LoraConfig(4, 8, TARGETS), verbose=False)
    with pytest.raises(ValueError, match="cannot merge LoRA into a QuantizedLinear"):
        merge_lora(model)


def test_merge_route_of_a_bf16_qlora_model_keeps_its_compute_dtype():
    """dequantize_lora_bases rebuilds each base in the layer's compute dtype (bf16 here, like the rest of the
    model), so the merged model runs and gives the unmerged QLoRA logits (float32 bases broke its forward)."""
    model = prepare_qlora(tiny_llama(), LoraConfig(4, 8, ["q_proj", "v_proj"]), compute_dtype=torch.bfloat16,
                          verbose=False)
    randomize_lora_(model)
    with torch.no_grad():
        before = logits_of(model, token_ids()).float()
        merged = merge_lora(dequantize_lora_bases(model), unload=True)
        assert merged.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
        after = logits_of(merged, token_ids()).float()
    torch.testing.assert_close(after, before, atol=0.1, rtol=0.05)  # bf16 rounding of the merged weights


def test_prepare_qlora_quantizes_gpt2_conv1d_and_equals_peft_on_the_dequantized_weights() -> None:
    # GPT-2's Conv1D layers were left in full precision without a word (quantize_model takes nn.Linear only).
    base = make("gpt2")
    qlora = prepare_qlora(copy.deepcopy(base), LoraConfig(4, 8, "all-linear"), verbose=False)
    layers = lora_layers(qlora)
    assert len(layers) == 4 and all(isinstance(m.base_layer, QuantizedLinear) for m in layers.values())
    randomize_lora_(qlora)
    # reference: PEFT (fan_in_fan_out over Conv1D) on GPT-2 holding the dequantized NF4 weights, same A and B
    dense = copy.deepcopy(base)
    with torch.no_grad():
        for name, m in layers.items():
            dense.get_submodule(name).weight.copy_(m.base_layer.dequantized_weight().T)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(dense, peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    their_layers = peft_layers(theirs)
    assert set(their_layers) == set(layers)
    copy_adapters(layers, their_layers)
    ids = token_ids()
    mine, ref = logits_of(qlora.train(), ids), theirs.train()(ids).logits
    torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)
    mine.square().mean().backward()
    ref.square().mean().backward()
    for name, m in layers.items():
        torch.testing.assert_close(m.lora_A.weight.grad, their_layers[name].lora_A["default"].weight.grad,
                                   rtol=1e-4, atol=1e-6)


def test_prepare_qlora_gpt2_packs_the_bytes_transformers_bitsandbytes_packs(tmp_path) -> None:
    # transformers' bitsandbytes loader also turns GPT-2's Conv1D into Linear4bit over the transposed weight
    base = make("gpt2")
    base.save_pretrained(str(tmp_path))
    q = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=False,
                                        bnb_4bit_compute_dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path), quantization_config=q, device_map="cpu",
                                                              dtype=torch.float32)
    ours = prepare_qlora(copy.deepcopy(base), LoraConfig(2, 4, "all-linear"), double_quant=False, verbose=False)
    for name, layer in lora_layers(ours).items():
        param = theirs.get_submodule(name).weight
        assert torch.equal(layer.base_layer.weight_data.flatten(), param.data.flatten()), name
        torch.testing.assert_close(layer.base_layer.dequantized_weight(),
                                   bnbf.dequantize_4bit(param.data, param.quant_state).float(), rtol=0, atol=0)


def test_gpt2_qlora_merge_route_gives_gpt2s_conv1d_layout_back(tmp_path) -> None:
    # after Conv1D -> nn.Linear for quantizing, the merged model must save in GPT-2's (in, out) layout again: an
    # nn.Linear left in its place would load transposed into GPT2LMHeadModel (silently, for a square c_proj)
    base = make("gpt2")
    qlora = prepare_qlora(copy.deepcopy(base), LoraConfig(4, 8, "all-linear"), verbose=False)
    randomize_lora_(qlora)
    ids = token_ids()
    with torch.no_grad():
        ref = logits_of(qlora.eval(), ids)
        merged = merge_lora(dequantize_lora_bases(qlora), unload=True)
        assert type(merged.transformer.h[0].attn.c_proj).__name__ == "Conv1D"
        torch.testing.assert_close(logits_of(merged, ids), ref, rtol=1e-4, atol=1e-4)
        merged.save_pretrained(str(tmp_path))
        back = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
        torch.testing.assert_close(logits_of(back, ids), ref, rtol=1e-4, atol=1e-4)
