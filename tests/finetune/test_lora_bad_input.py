"""Bad input gets a clear ValueError (or FileNotFoundError) naming what was seen and what was expected, and a
failed load leaves the model untouched."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from mlcore.attention import MultiHeadAttention
from mlcore.finetune import (
    LoraConfig,
    LoraLinear,
    adapter_state_dict,
    apply_lora,
    dequantize_lora_bases,
    find_targets,
    load_adapter,
    lora_layers,
    merge_lora,
    read_adapter,
    save_adapter,
    trainable_parameters,
    unmerge_lora,
)
from mlcore.model import Transformer
from tests.finetune._lora_testutils import peft_twin, randomize_lora_, tiny_gpt2, tiny_llama, tiny_mlcore


@pytest.fixture(scope="module")
def llama() -> nn.Module:
    return tiny_llama()


@pytest.fixture
def adapter_dir(tmp_path, llama):
    model = apply_lora(copy.deepcopy(llama), LoraConfig(4, 8, ["q_proj", "v_proj"]), verbose=False)
    randomize_lora_(model)
    return save_adapter(model, tmp_path / "adapter")


@pytest.mark.parametrize("targets", [["query", "value"], r"encoder\..*", ["q"], ["proj"]])
def test_targets_matching_nothing_list_the_candidates(llama, targets) -> None:
    model = copy.deepcopy(llama)
    with pytest.raises(ValueError, match="matches no module") as info:
        apply_lora(model, LoraConfig(4, 8, targets), verbose=False)
    assert "q_proj" in str(info.value) and "model.layers.0.self_attn.q_proj" in str(info.value)
    assert not lora_layers(model)


def test_target_that_is_not_linear(llama) -> None:
    with pytest.raises(ValueError, match="embed_tokens.*Embedding.*only linear"):
        apply_lora(copy.deepcopy(llama), LoraConfig(4, 8, ["embed_tokens"]), verbose=False)


def test_fused_qkv_named_when_q_k_v_are_targeted() -> None:
    holder = nn.Module()
    holder.attn = MultiHeadAttention(64, 4, n_kv_heads=2, fused_qkv=True)
    with pytest.raises(ValueError, match="fused qkv_proj") as info:
        apply_lora(holder, LoraConfig(4, 8, ["q_proj", "k_proj", "v_proj"]), verbose=False)
    assert "target 'qkv_proj'" in str(info.value)


@pytest.mark.parametrize("r", [0, -1, 2.5, True, "4"])
def test_rank_must_be_positive_int(r) -> None:
    with pytest.raises(ValueError, match="r must be a positive int"):
        LoraConfig(r, 8, ["q_proj"])
    with pytest.raises(ValueError, match="r must be a positive int"):
        LoraLinear(nn.Linear(4, 4), r, 8)


@pytest.mark.parametrize("kwargs, match", [
    (dict(lora_alpha=0), "lora_alpha must be a positive"),
    (dict(lora_alpha=float("nan")), "lora_alpha must be a positive"),
    (dict(lora_dropout=1.0), "lora_dropout must be in"),
    (dict(lora_dropout=-0.1), "lora_dropout must be in"),
    (dict(init="xavier"), "init must be one of"),
    (dict(bias="some"), "bias must be one of"),
    (dict(target_modules=[]), "non-empty list"),
    (dict(target_modules=["q_proj", ""]), "non-empty list"),
    (dict(target_modules=""), "must not be empty"),
    (dict(target_modules="(q_proj"), "not a valid regular expression"),
    (dict(target_modules=5), "list of module names or a regex"),
    (dict(modules_to_save="score"), "modules_to_save must be a list"),
])
def test_config_validation(kwargs, match) -> None:
    base = dict(r=4, lora_alpha=8, target_modules=["q_proj"])
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        LoraConfig(**base)


def test_lora_linear_needs_a_linear_base() -> None:
    with pytest.raises(ValueError, match="in_features / out_features"):
        LoraLinear(nn.Embedding(4, 4), 2, 4)
    with pytest.raises(ValueError, match="lora_dropout"):
        LoraLinear(nn.Linear(4, 4), 2, 4, lora_dropout=1.5)


def test_apply_twice_and_onto_a_peft_model(llama) -> None:
    model = apply_lora(copy.deepcopy(llama), LoraConfig(4, 8, ["q_proj"]), verbose=False)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        apply_lora(model, LoraConfig(4, 8, ["v_proj"]), verbose=False)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        apply_lora(peft_twin(llama, r=4, lora_alpha=8, target_modules=["q_proj"]), LoraConfig(4, 8, ["v_proj"]))
    with pytest.raises(ValueError, match="mlcore LoraConfig"):
        apply_lora(copy.deepcopy(llama), {"r": 4})


def test_loading_into_a_model_that_has_adapters(llama, adapter_dir) -> None:
    model = apply_lora(copy.deepcopy(llama), LoraConfig(4, 8, ["o_proj"]), verbose=False)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        load_adapter(model, adapter_dir)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        load_adapter(load_adapter(copy.deepcopy(llama), adapter_dir), adapter_dir)


def _edit_config(folder, **changes) -> None:
    path = folder / "adapter_config.json"
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


@pytest.mark.parametrize("changes, match", [
    (dict(r=8), r"lora_A of .* has shape \(4, 64\), the model needs \(8, 64\)"),
    (dict(target_modules=["q_proj", "v_proj", "k_proj"]), "targets modules without weights"),
    (dict(target_modules=["q_proj"]), "file has weights for modules the config does not target"),
    (dict(target_modules=["c_attn"]), "does not fit LlamaForCausalLM.*matches no module"),
    (dict(peft_type="IA3"), "peft_type must be 'LORA'"),
    (dict(use_dora=True), "use_dora=True.*does not support"),
    (dict(rank_pattern={"q_proj": 2}), "rank_pattern"),
    (dict(r=0), "r must be a positive int"),
    (dict(use_rslora="false"), "use_rslora must be a bool, got 'false'"),  # was read as True: rsLoRA scaling
])
def test_adapter_config_that_does_not_fit(llama, adapter_dir, changes, match) -> None:
    _edit_config(adapter_dir, **changes)
    model = copy.deepcopy(llama)
    with pytest.raises(ValueError, match=match):
        load_adapter(model, adapter_dir)
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())


def test_adapter_from_a_model_of_other_shapes(tmp_path, llama) -> None:
    wider = apply_lora(tiny_llama(hidden_size=96), LoraConfig(4, 8, ["q_proj", "v_proj"]), verbose=False)
    save_adapter(wider, tmp_path)
    model = copy.deepcopy(llama)
    with pytest.raises(ValueError, match=r"has shape \(4, 96\), the model needs \(4, 64\)"):
        load_adapter(model, tmp_path)
    assert not lora_layers(model)


def test_mlcore_adapter_does_not_fit_a_transformers_model(tmp_path, llama) -> None:
    mine = apply_lora(tiny_mlcore(), LoraConfig(4, 8, r"layers\.\d+\.attn\.q_proj"), verbose=False)
    save_adapter(mine, tmp_path)
    with pytest.raises(ValueError, match="matches no module"):
        load_adapter(copy.deepcopy(llama), tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "json", "missing_weights", "missing_config"])
def test_corrupt_or_missing_adapter_files(llama, adapter_dir, damage: str) -> None:
    weights, config = adapter_dir / "adapter_model.safetensors", adapter_dir / "adapter_config.json"
    if damage == "garbage":
        weights.write_bytes(b"\x00\x01not a safetensors file at all" * 10)
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "json":
        config.write_text("{ r: 4,")
    elif damage == "missing_weights":
        weights.unlink()
    else:
        config.unlink()
    model = copy.deepcopy(llama)
    error = FileNotFoundError if damage.startswith("missing") else ValueError
    with pytest.raises(error, match="adapter"):
        load_adapter(model, adapter_dir)
    assert not lora_layers(model)


def test_merge_refuses_tied_weights_and_models_without_adapters() -> None:
    model = tiny_mlcore()  # lm_head shares its weight with the embedding
    with pytest.raises(ValueError, match="has no LoRA layers"):
        merge_lora(model)
    with pytest.raises(ValueError, match="has no LoRA layers"):
        unmerge_lora(model)
    apply_lora(model, LoraConfig(4, 8, ["lm_head", "q_proj"]), verbose=False)
    before = model.embed.weight.detach().clone()
    with pytest.raises(ValueError, match="'lm_head' is shared with"):
        merge_lora(model)
    assert torch.equal(model.embed.weight, before)
    assert not any(layer.merged for layer in lora_layers(model).values())


def test_save_without_adapters_and_hf_names_on_a_foreign_model(tmp_path, llama) -> None:
    with pytest.raises(ValueError, match="no LoRA layers"):
        save_adapter(copy.deepcopy(llama), tmp_path)
    model = apply_lora(copy.deepcopy(llama), LoraConfig(4, 8, ["q_proj"]), verbose=False)
    with pytest.raises(ValueError, match="hf_names=True needs an mlcore Transformer"):
        save_adapter(model, tmp_path, hf_names=True)


def test_save_with_hf_names_refuses_a_decoder_to_hf_cannot_export(tmp_path) -> None:
    # A GPT-2 imported into mlcore has no to_hf() twin (LayerNorm, GELU, learned positions); hf_names=True wrote
    # Llama names ("model.layers.0.self_attn.q_proj") that GPT-2's "transformer.h.0.attn.c_attn" never matches.
    model = apply_lora(Transformer.from_hf(tiny_gpt2()), LoraConfig(2, 4, ["q_proj"]), verbose=False)
    with pytest.raises(ValueError, match=r"hf_names=True .* cannot export this model: .*norm='layernorm'"):
        save_adapter(model, tmp_path, hf_names=True)
    assert not (tmp_path / "adapter_config.json").exists()
    save_adapter(model, tmp_path)  # mlcore's own names still save


@pytest.mark.parametrize("call, match", [
    (lambda d: load_adapter("model", d), "load_adapter model must be an nn.Module, got str"),
    (lambda d: save_adapter({"w": torch.zeros(1)}, d), "save_adapter model must be an nn.Module, got dict"),
    (lambda d: merge_lora("model"), "merge_lora model must be an nn.Module"),
    (lambda d: unmerge_lora(None), "unmerge_lora model must be an nn.Module, got NoneType"),
    (lambda d: lora_layers("model"), "lora_layers model must be an nn.Module"),
    (lambda d: adapter_state_dict("model"), "adapter_state_dict model must be an nn.Module"),
    (lambda d: trainable_parameters("model"), "trainable_parameters model must be an nn.Module"),
    (lambda d: dequantize_lora_bases("model"), "dequantize_lora_bases model must be an nn.Module"),
    (lambda d: find_targets(nn.Linear(2, 2), {"r": 2}), "find_targets config must be an mlcore LoraConfig, got dict"),
    (lambda d: read_adapter(None), "read_adapter directory must be a str or a path, got NoneType"),
    (lambda d: load_adapter(nn.Linear(2, 2), 3), "load_adapter directory must be a str or a path, got int"),
])
def test_public_entry_points_name_a_bad_model_config_or_directory(tmp_path, call, match) -> None:
    # these failed with an AttributeError / TypeError from deep inside (str has no named_modules, Path(None))
    with pytest.raises(ValueError, match=match):
        call(tmp_path)


def test_save_adapter_refuses_a_directory_that_is_not_a_path(llama) -> None:
    model = apply_lora(copy.deepcopy(llama), LoraConfig(2, 4, ["q_proj"]), verbose=False)
    with pytest.raises(ValueError, match="save_adapter directory must be a str or a path, got NoneType"):
        save_adapter(model, None)


def _encoder(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()


def test_lora_in_a_torch_encoder_layer_runs_in_eval_mode_as_peft_in_train_mode():
    # nn.TransformerEncoderLayer's eval fast path reads linear1 / linear2 .weight directly: the adapter was
    # silently skipped (PEFT's too); its train-mode (modular) forward is the reference
    import peft

    base, x = _encoder(), torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(1))
    ours = apply_lora(copy.deepcopy(base), LoraConfig(2, 4, ["linear1", "linear2"]), verbose=False)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=2, lora_alpha=4,
                                                                      target_modules=["linear1", "linear2"]))
    randomize_lora_(ours)
    with torch.no_grad():
        for name, m in lora_layers(ours).items():
            twin = theirs.base_model.model.get_submodule(name)
            twin.lora_A["default"].weight.copy_(m.lora_A.weight)
            twin.lora_B["default"].weight.copy_(m.lora_B.weight)
        ref = theirs.train()(x)
        assert not torch.allclose(ref, base(x))
        torch.testing.assert_close(ours.eval()(x), ref, rtol=1e-5, atol=1e-6)
        merged = merge_lora(copy.deepcopy(ours), unload=True)
        torch.testing.assert_close(merged(x), ref, rtol=1e-5, atol=1e-5)


def test_out_proj_of_torch_multihead_attention_is_refused_and_left_out_of_all_linear():
    # nn.MultiheadAttention never calls out_proj (it reads out_proj.weight): LoRA there changed nothing until a
    # merge, which then changed the output
    model = _encoder()
    with pytest.raises(ValueError, match="out_proj of an nn.MultiheadAttention"):
        apply_lora(copy.deepcopy(model), LoraConfig(2, 4, ["out_proj"]), verbose=False)
    targets = find_targets(model, LoraConfig(2, 4, "all-linear"))
    assert targets == [f"layers.{i}.linear{j}" for i in range(2) for j in (1, 2)]
