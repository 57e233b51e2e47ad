"""Adapters in PEFT's format: PEFT loads what mlcore saves, mlcore loads what PEFT saves, with identical logits;
the files hold exactly PEFT's key names; an mlcore decoder's adapter loads into PEFT on its HF export."""

from __future__ import annotations

import copy
import json
import warnings

import peft
import pytest
import torch
import transformers
from safetensors.torch import load_file

from mlcore.finetune import (
    LoraConfig,
    apply_lora,
    load_adapter,
    lora_layers,
    merge_lora,
    save_adapter,
    trainable_parameters,
)
from tests.finetune._lora_testutils import (
    logits_of,
    make,
    peft_twin,
    randomize_,
    randomize_lora_,
    tiny_llama,
    tiny_mlcore,
    token_ids,
)


def _peft_load(base: torch.nn.Module, folder) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.PeftModel.from_pretrained(copy.deepcopy(base), str(folder)).eval()


@pytest.mark.parametrize("kind", ["llama", "mlcore"])
@pytest.mark.parametrize("config", [
    dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    dict(r=3, lora_alpha=5, target_modules="all-linear", use_rslora=True),
    dict(r=2, lora_alpha=4, target_modules=r".*layers\.1\..*_proj", lora_dropout=0.1),
])
def test_peft_loads_ours(tmp_path, kind: str, config: dict) -> None:
    base = make(kind)
    ours = apply_lora(copy.deepcopy(base), LoraConfig(**config), verbose=False)
    randomize_lora_(ours)
    save_adapter(ours, tmp_path)
    theirs = _peft_load(base, tmp_path)
    ids = token_ids()
    with torch.no_grad():
        mine = logits_of(ours.eval(), ids)
        torch.testing.assert_close(logits_of(theirs, ids), mine, rtol=1e-5, atol=1e-5)
        assert (mine - logits_of(base, ids)).abs().max() > 1e-2


@pytest.mark.parametrize("kind", ["llama", "mlcore"])
@pytest.mark.parametrize("rslora", [False, True])
def test_we_load_pefts(tmp_path, kind: str, rslora: bool) -> None:
    base = make(kind)
    theirs = peft_twin(base, r=4, lora_alpha=16, target_modules=["k_proj", "o_proj", "up_proj"], use_rslora=rslora)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    theirs.save_pretrained(str(tmp_path))
    ours = load_adapter(copy.deepcopy(base), tmp_path)
    ids = token_ids()
    with torch.no_grad():
        ref = logits_of(theirs.eval(), ids)
        torch.testing.assert_close(logits_of(ours.eval(), ids), ref, rtol=1e-5, atol=1e-5)
        assert (ref - logits_of(base, ids)).abs().max() > 1e-2
    assert len(lora_layers(ours)) == 3 * 2
    assert trainable_parameters(ours)[0] == 0  # loaded for inference, like PeftModel.from_pretrained
    trainable = load_adapter(copy.deepcopy(base), tmp_path, is_trainable=True)
    assert trainable_parameters(trainable)[0] == 4 * 2 * ((64 + 32) + (64 + 64) + (64 + trainable.config.d_ff
                                                                                    if kind == "mlcore" else 64 + 96))


def test_files_hold_pefts_keys_shapes_and_config(tmp_path) -> None:
    base = tiny_llama()
    spec = dict(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], use_rslora=True)
    ours = apply_lora(copy.deepcopy(base), LoraConfig(**spec), verbose=False)
    save_adapter(ours, tmp_path / "ours")
    peft_twin(base, **spec).save_pretrained(str(tmp_path / "peft"))
    mine, ref = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("ours", "peft"))
    assert {k: v.shape for k, v in mine.items()} == {k: v.shape for k, v in ref.items()}
    assert {k: v.dtype for k, v in mine.items()} == {k: v.dtype for k, v in ref.items()}
    c_mine, c_ref = (json.loads((tmp_path / d / "adapter_config.json").read_text()) for d in ("ours", "peft"))
    for key in ("peft_type", "r", "lora_alpha", "use_rslora", "lora_dropout", "bias", "init_lora_weights",
                "fan_in_fan_out", "use_dora", "modules_to_save"):
        assert c_mine[key] == c_ref[key], key
    assert sorted(c_mine["target_modules"]) == sorted(c_ref["target_modules"])


def test_round_trip_ours_to_ours_and_merged_export(tmp_path) -> None:
    base = tiny_mlcore()
    ours = apply_lora(copy.deepcopy(base), LoraConfig(4, 8, "all-linear"), verbose=False)
    randomize_lora_(ours)
    save_adapter(ours, tmp_path)
    again = load_adapter(copy.deepcopy(base), tmp_path)
    ids = token_ids()
    with torch.no_grad():
        ref = logits_of(ours.eval(), ids)
        torch.testing.assert_close(logits_of(again, ids), ref, rtol=0, atol=0)
        merged = merge_lora(again, unload=True)
        torch.testing.assert_close(logits_of(merged, ids), ref, rtol=1e-4, atol=1e-4)
        hf = merged.to_hf()  # a plain mlcore model again: HF export works and agrees
        torch.testing.assert_close(hf(ids).logits, ref, rtol=1e-4, atol=1e-4)


def test_adapter_saved_with_hf_names_loads_into_peft_on_the_hf_export(tmp_path) -> None:
    base = tiny_mlcore()
    ours = apply_lora(copy.deepcopy(base), LoraConfig(4, 8, ["q_proj", "v_proj", "gate_proj"]), verbose=False)
    randomize_lora_(ours)
    save_adapter(ours, tmp_path, hf_names=True)
    theirs = _peft_load(base.to_hf(), tmp_path)
    ids = token_ids()
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, logits_of(ours.eval(), ids), rtol=1e-4, atol=1e-4)


def test_modules_to_save_both_ways(tmp_path) -> None:
    cfg = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=96, vocab_size=128, num_labels=3, pad_token_id=0)
    base = randomize_(transformers.LlamaForSequenceClassification(cfg))
    spec = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["score"])
    ours = apply_lora(copy.deepcopy(base), LoraConfig(**spec), verbose=False)
    randomize_lora_(ours)
    with torch.no_grad():
        ours.score.weight.add_(1.0)
    assert ours.score.weight.requires_grad and not ours.model.embed_tokens.weight.requires_grad
    save_adapter(ours, tmp_path / "ours")
    ids = token_ids()
    with torch.no_grad():
        ref = ours.eval()(ids).logits
        torch.testing.assert_close(_peft_load(base, tmp_path / "ours")(ids).logits, ref, rtol=1e-5, atol=1e-5)
    theirs = peft_twin(base, ours, **spec)
    with torch.no_grad():
        theirs.base_model.model.score.modules_to_save["default"].weight.copy_(ours.score.weight)
    theirs.save_pretrained(str(tmp_path / "peft"))
    back = load_adapter(copy.deepcopy(base), tmp_path / "peft")
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_bias_adapters_both_ways(tmp_path, bias: str) -> None:
    base = make("qwen2")
    spec = dict(r=4, lora_alpha=8, target_modules=["q_proj"], bias=bias)
    ours = apply_lora(copy.deepcopy(base), LoraConfig(**spec), verbose=False)
    randomize_lora_(ours)
    with torch.no_grad():
        for n, p in ours.named_parameters():
            if p.requires_grad and n.endswith("bias"):
                p.add_(0.5)
    save_adapter(ours, tmp_path)
    ids = token_ids()
    with torch.no_grad():
        ref = ours.eval()(ids).logits
        torch.testing.assert_close(_peft_load(base, tmp_path)(ids).logits, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(load_adapter(copy.deepcopy(base), tmp_path)(ids).logits, ref,
                                   rtol=1e-5, atol=1e-5)
    # A loaded adapter is frozen; saving it again keeps its biases (PEFT picks them by name too).
    loaded = load_adapter(copy.deepcopy(base), tmp_path)
    save_adapter(loaded, tmp_path / "again")
    first = load_file(tmp_path / "adapter_model.safetensors")
    again = load_file(tmp_path / "again/adapter_model.safetensors")
    assert first.keys() == again.keys() and any(k.endswith(".bias") for k in again)
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_pefts_bias_all_folder_with_a_module_to_save_that_has_a_bias_loads(tmp_path) -> None:
    # PEFT's bias="all" picks every key holding "bias", so GPT-2's ln_f (a module to save) is also written under
    # its wrapper paths, ln_f.modules_to_save.bias and ln_f.original_module.bias; mlcore refused the folder.
    base = make("gpt2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
            r=2, lora_alpha=4, target_modules=["c_attn"], bias="all", modules_to_save=["ln_f"]))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in theirs.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    theirs.save_pretrained(tmp_path)
    assert "base_model.model.transformer.ln_f.modules_to_save.bias" in load_file(tmp_path / "adapter_model.safetensors")
    ids = token_ids()
    with torch.no_grad():
        ref = theirs.eval()(ids).logits
        torch.testing.assert_close(load_adapter(copy.deepcopy(base), tmp_path)(ids).logits, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", [
    dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "lm_head"], bias="all"),
    dict(r=3, lora_alpha=5, target_modules=r".*\.self_attn\.(q|o)_proj", use_rslora=True, modules_to_save=["lm_head"]),
])
def test_pefts_adapter_on_the_hf_export_loads_into_the_mlcore_decoder(tmp_path, spec: dict) -> None:
    # An adapter PEFT saved on model.to_hf() (HF module names) was refused by load_adapter on the mlcore model it
    # came from ("does not fit"); its names are now read through the export's naming, logits equal PEFT's.
    base = tiny_mlcore()
    base.lm_head.weight = torch.nn.Parameter(base.embed.weight.detach() + 0.1)  # untied: lm_head can be adapted
    base.config.tie_embeddings = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(base.to_hf(), peft.LoraConfig(**spec, init_lora_weights=False))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            if p.requires_grad and ".lora_" not in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)  # trained biases / head differ from the base
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT: "Setting save_embedding_layers to True" (lm_head is targeted)
        theirs.save_pretrained(tmp_path)
    ours = load_adapter(copy.deepcopy(base), tmp_path)
    ids = token_ids()
    with torch.no_grad():
        ref = theirs.eval()(ids).logits
        torch.testing.assert_close(ours(ids), ref, rtol=1e-5, atol=1e-5)
        save_adapter(ours, tmp_path / "again", hf_names=True)  # and mlcore's own hf_names folder loads back
        torch.testing.assert_close(load_adapter(copy.deepcopy(base), tmp_path / "again")(ids), ref,
                                   rtol=1e-5, atol=1e-5)
