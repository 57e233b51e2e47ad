"""Sixth audit, LoRA / QLoRA against peft 0.21 + transformers' bitsandbytes 4-bit loader (CPU).

- ``prepare_qlora`` equals ``from_pretrained(quantization_config=BitsAndBytesConfig(load_in_4bit=True, ...))``
  + ``peft.get_peft_model`` bit for bit: packed bytes, scales, logits and LoRA gradients, for NF4 and FP4, with
  and without double quantization, in float32 and bfloat16 (the weights are cast before quantizing, RoPE's
  frequencies stay float32, and the LoRA output is rounded before the sum as PEFT's bitsandbytes layers do);
- PEFT's ``ensure_weight_tying`` is refused where it would keep a trained embedding tied (mlcore unties it:
  the same forward, other gradients), accepted where PEFT ignores it.
"""

from __future__ import annotations

import copy
import json
import warnings

import peft
import pytest
import torch
import transformers

from mlcore.finetune import LoraConfig, apply_lora, load_adapter, lora_layers, prepare_qlora, save_adapter
from mlcore.finetune.lora import LoraLinear
from mlcore.quant import QuantizedLinear, quantize
from tests.finetune._lora_testutils import (
    VOCAB,
    logits_of,
    peft_layers,
    randomize_,
    randomize_lora_,
    tiny_gpt2,
    tiny_llama,
    token_ids,
)

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _transformers_qlora(tmp_path, base, quant_type: str, double_quant: bool, dtype: torch.dtype, targets):
    base.save_pretrained(str(tmp_path))
    q = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                                        bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = type(base).from_pretrained(str(tmp_path), quantization_config=q, device_map="cpu", dtype=dtype,
                                        attn_implementation="eager")
        return peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets))


@pytest.mark.parametrize("kind,quant_type,double_quant,dtype", [
    ("llama", "nf4", True, torch.bfloat16),
    ("llama", "fp4", True, torch.float32),
    ("llama", "fp4", False, torch.bfloat16),
    ("llama", "nf4", False, torch.float16),
    ("gpt2", "nf4", True, torch.bfloat16),
])
def test_prepare_qlora_equals_transformers_bitsandbytes_and_peft_bit_for_bit(tmp_path, kind, quant_type,
                                                                            double_quant, dtype) -> None:
    # in_features are multiples of 64: bitsandbytes' CPU 4-bit path mis-reads rows that are not whole blocks
    base = tiny_llama(intermediate_size=128) if kind == "llama" else tiny_gpt2()
    targets = LLAMA_TARGETS if kind == "llama" else "all-linear"
    theirs = _transformers_qlora(tmp_path, copy.deepcopy(base), quant_type, double_quant, dtype, targets)
    their_layers = peft_layers(theirs)
    ours = prepare_qlora(copy.deepcopy(base), LoraConfig(4, 8, targets), quant_type=quant_type,
                         double_quant=double_quant, compute_dtype=None if dtype == torch.float32 else dtype,
                         verbose=False)
    layers = lora_layers(ours)
    assert set(layers) == set(their_layers)
    for name, layer in layers.items():  # read before bitsandbytes' first forward, which repacks for its kernel
        param = their_layers[name].base_layer.weight
        assert torch.equal(layer.base_layer.weight_data.flatten(), param.data.flatten()), name
        assert torch.equal(layer.base_layer.weight_scales.flatten(),
                           param.quant_state.absmax.flatten().to(layer.base_layer.weight_scales.dtype)), name
    randomize_lora_(ours)
    with torch.no_grad():
        for name, layer in layers.items():
            their_layers[name].lora_A["default"].weight.copy_(layer.lora_A.weight)
            their_layers[name].lora_B["default"].weight.copy_(layer.lora_B.weight)
    ids = token_ids()
    mine, ref = logits_of(ours.train(), ids), theirs.train()(ids).logits
    assert mine.dtype == ref.dtype == dtype
    torch.testing.assert_close(mine, ref, rtol=0, atol=0)
    mine.float().square().mean().backward()
    ref.float().square().mean().backward()
    for name, layer in layers.items():
        for part in ("lora_A", "lora_B"):
            torch.testing.assert_close(getattr(layer, part).weight.grad,
                                       getattr(their_layers[name], part)["default"].weight.grad, rtol=0, atol=0)


def test_lora_over_a_quantized_base_rounds_its_output_before_the_sum_as_peft_bitsandbytes() -> None:
    g = torch.Generator().manual_seed(0)
    base = QuantizedLinear(quantize((torch.randn(64, 128, generator=g) * 0.1).to(torch.bfloat16), "nf4"))
    layer = LoraLinear(base, 4, 8)
    with torch.no_grad():
        layer.lora_B.weight.copy_(torch.randn(64, 4, generator=g))
    x = torch.randn(5, 128, generator=g).to(torch.bfloat16)
    with torch.no_grad():
        expected = base(x) + (layer.lora_delta(x)).to(torch.bfloat16)  # peft/tuners/lora/bnb.py Linear4bit
        assert torch.equal(layer(x), expected)


def test_prepare_qlora_keeps_transformers_rope_frequencies_in_float32() -> None:
    model = prepare_qlora(tiny_llama(), LoraConfig(4, 8, ["q_proj"]), compute_dtype=torch.bfloat16, verbose=False)
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert lora_layers(model)["model.layers.0.self_attn.q_proj"].base_layer.quant_metadata["dtype"] == "bfloat16"


@pytest.mark.parametrize("kwargs,match", [
    (dict(quant_type="int4"), "quant_type must be one of"),
    (dict(quant_type="NF4"), "quant_type must be one of"),
    (dict(blocksize=48), "blocksize must be one of"),
    (dict(blocksize=True), "blocksize must be one of"),
    (dict(double_quant="yes"), "double_quant must be True or False"),
])
def test_prepare_qlora_refuses_bad_formats_by_name_before_changing_the_model(kwargs, match) -> None:
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        prepare_qlora(model, LoraConfig(4, 8, ["q_proj"]), compute_dtype=torch.bfloat16, verbose=False, **kwargs)
    after = model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


def _tied_llama() -> torch.nn.Module:
    cfg = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=96, vocab_size=VOCAB, max_position_embeddings=64,
                                   tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM._from_config(cfg, attn_implementation="eager")
    model.tie_weights()
    return randomize_(model)


def _peft_folder(tmp_path, base, **config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        twin = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, **config))
    with torch.no_grad():
        for p in twin.parameters():
            if p.requires_grad:
                p.add_(0.1)
    twin.save_pretrained(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("saved", [["embed_tokens"], ["lm_head"]])
def test_pefts_ensure_weight_tying_on_a_tied_embedding_is_refused_by_name(tmp_path, saved) -> None:
    # PEFT trains the tied pair as one tensor (gradients from the input and the output use); mlcore untied it
    # and trained the embedding alone: the same loaded forward, gradients 26-42% off
    base = _tied_llama()
    folder = _peft_folder(tmp_path, base, target_modules=["q_proj"], modules_to_save=saved, ensure_weight_tying=True)
    model = copy.deepcopy(base)
    with pytest.raises(ValueError, match="ensure_weight_tying=True: 'model.embed_tokens' shares"):
        load_adapter(model, folder, is_trainable=True)
    assert not lora_layers(model) and model.lm_head.weight is model.model.embed_tokens.weight
    with pytest.raises(ValueError, match="ensure_weight_tying=True: 'lm_head' shares"):
        apply_lora(copy.deepcopy(base), LoraConfig(4, 8, ["q_proj", "lm_head"], ensure_weight_tying=True),
                   verbose=False)


@pytest.mark.parametrize("kind", ["untied", "gpt2"])
def test_ensure_weight_tying_where_peft_ignores_it_loads_and_trains_as_peft(tmp_path, kind) -> None:
    base, saved = (tiny_llama(), ["embed_tokens"]) if kind == "untied" else (tiny_gpt2(), ["wte"])
    targets = ["q_proj"] if kind == "untied" else ["c_attn"]
    folder = _peft_folder(tmp_path / "peft", base, target_modules=targets, modules_to_save=saved,
                          ensure_weight_tying=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(folder), is_trainable=True).eval()
    ours = load_adapter(copy.deepcopy(base), folder, is_trainable=True).eval()
    ids = token_ids()
    mine, ref = logits_of(ours, ids), logits_of(theirs, ids)
    torch.testing.assert_close(mine, ref, rtol=0, atol=0)
    mine.square().mean().backward()
    ref.square().mean().backward()
    saved_name = "model.embed_tokens" if kind == "untied" else "transformer.wte"
    torch.testing.assert_close(ours.get_submodule(saved_name).weight.grad,
                               theirs.base_model.model.get_submodule(saved_name).modules_to_save["default"].weight.grad)
    save_adapter(ours, tmp_path / "ours")  # and the flag goes back out as it came in
    written = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert written["ensure_weight_tying"] is True and LoraConfig.from_peft_dict(written).ensure_weight_tying


def test_lora_config_refuses_a_non_bool_ensure_weight_tying() -> None:
    with pytest.raises(ValueError, match="ensure_weight_tying must be a bool"):
        LoraConfig(4, 8, ["q_proj"], ensure_weight_tying="false")
    with pytest.raises(ValueError, match="ensure_weight_tying must be a bool"):
        LoraConfig.from_peft_dict({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"],
                                   "ensure_weight_tying": 1})
