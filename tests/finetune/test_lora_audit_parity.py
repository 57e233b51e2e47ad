"""Cases where mlcore used to differ from PEFT 0.21: LoRA modules' train/eval mode, inits that rewrite the base,
modules_to_save on tied weights, with buffers, and PEFT's matching rule for them; plus inputs refused early."""

from __future__ import annotations

import copy
import warnings

import peft
import pytest
import torch
from torch import nn

from mlcore.finetune import (
    LoraConfig,
    LoraLinear,
    apply_lora,
    dequantize_lora_bases,
    load_adapter,
    lora_layers,
    merge_lora,
    prepare_qlora,
    save_adapter,
    trainable_parameters,
)
from mlcore.quant import QuantizedLinear
from tests.finetune._lora_testutils import (
    logits_of,
    peft_twin,
    randomize_lora_,
    tiny_llama,
    tiny_mlcore,
    token_ids,
)


def _peft_load(base: nn.Module, folder) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.PeftModel.from_pretrained(copy.deepcopy(base), str(folder))  # no .eval(): its own mode


def _sgd_step(model: nn.Module, ids: torch.Tensor) -> None:
    model.train()
    logits_of(model, ids).square().mean().backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.sub_(0.5 * p.grad)
    model.eval()


# -- 1. a LoRA layer added to a model in eval mode is in eval mode --------------------------------------------

def test_lora_in_an_eval_model_is_deterministic_like_peft(tmp_path) -> None:
    base = tiny_llama().eval()
    spec = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.5)
    ours = apply_lora(copy.deepcopy(base), LoraConfig(**spec), verbose=False)
    randomize_lora_(ours)
    assert not any(m.training for m in ours.modules())
    save_adapter(ours, tmp_path)
    theirs = _peft_load(base, tmp_path)
    back = load_adapter(copy.deepcopy(base).train(), tmp_path)  # PEFT's from_pretrained also ends in eval mode
    assert not back.training and not any(m.training for m in back.modules()) and not theirs.training
    ids = token_ids()
    with torch.no_grad():
        ref = logits_of(theirs, ids)
        torch.testing.assert_close(logits_of(ours, ids), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logits_of(back, ids), ref, rtol=1e-5, atol=1e-5)


# -- 2. inits that rewrite the base weight ------------------------------------------------------------------

@pytest.mark.parametrize("init", ["pissa", "pissa_niter_4", "olora", "corda", "loftq", "eva", "lora_ga", "mica"])
def test_base_rewriting_inits_are_refused(init: str) -> None:
    with pytest.raises(ValueError, match=f"init_lora_weights='{init}'.*base weight"):
        LoraConfig.from_peft_dict({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"],
                                   "init_lora_weights": init})


def test_pissa_folder_from_peft_is_refused_and_plain_inits_load_as_peft(tmp_path) -> None:
    base = tiny_llama()
    for init in ("pissa", False, "gaussian", "orthogonal"):
        theirs = peft_twin(base, r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=init)
        with torch.no_grad():
            for n, p in theirs.named_parameters():
                if "lora_" in n:
                    p.add_(0.1)
        folder = tmp_path / str(init)
        theirs.save_pretrained(str(folder))
        model = copy.deepcopy(base)
        if init == "pissa":  # PEFT reloads it onto a rewritten base; mlcore cannot
            with pytest.raises(ValueError, match="init_lora_weights='pissa'"):
                load_adapter(model, folder)
            assert not lora_layers(model)
            continue
        ids = token_ids()
        with torch.no_grad():
            torch.testing.assert_close(logits_of(load_adapter(model, folder), ids),
                                       logits_of(_peft_load(base, folder), ids), rtol=1e-5, atol=1e-5)


# -- 3. modules_to_save on a tied lm_head: PEFT trains a copy, the embedding stays -------------------------

@pytest.mark.parametrize("kind", ["llama", "mlcore"])
def test_tied_lm_head_in_modules_to_save_round_trips(tmp_path, kind: str) -> None:
    base = tiny_llama(tie_word_embeddings=True) if kind == "llama" else tiny_mlcore()
    embed = (lambda m: m.get_input_embeddings()) if kind == "llama" else (lambda m: m.embed)
    assert base.lm_head.weight is embed(base).weight
    spec = dict(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["lm_head"])
    ours = apply_lora(copy.deepcopy(base), LoraConfig(**spec), verbose=False)
    randomize_lora_(ours)
    assert not embed(ours).weight.requires_grad and ours.lm_head.weight.requires_grad
    ids = token_ids()
    if kind == "llama":  # same training step as PEFT: same logits after, embedding unchanged in both
        theirs = peft_twin(base, ours, **spec)
        assert trainable_parameters(ours) == theirs.get_nb_trainable_parameters()
        _sgd_step(ours, ids)
        _sgd_step(theirs, ids)
        with torch.no_grad():
            torch.testing.assert_close(logits_of(ours, ids), logits_of(theirs, ids), rtol=1e-4, atol=1e-4)
        theirs.save_pretrained(str(tmp_path / "peft"))  # peft -> mlcore
        with torch.no_grad():
            torch.testing.assert_close(logits_of(load_adapter(copy.deepcopy(base), tmp_path / "peft"), ids),
                                       logits_of(theirs, ids), rtol=1e-4, atol=1e-4)
    else:
        _sgd_step(ours, ids)
    assert torch.equal(embed(ours).weight, embed(base).weight)
    save_adapter(ours, tmp_path / "ours")
    with torch.no_grad():
        ref = logits_of(ours, ids)
        torch.testing.assert_close(logits_of(load_adapter(copy.deepcopy(base), tmp_path / "ours"), ids), ref,
                                   rtol=1e-5, atol=1e-5)
        if kind == "llama":  # mlcore -> peft
            torch.testing.assert_close(logits_of(_peft_load(base, tmp_path / "ours"), ids), ref,
                                       rtol=1e-5, atol=1e-5)


# -- 4. modules_to_save with buffers (BatchNorm running statistics) ----------------------------------------

class _BnNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj, self.bn, self.out = nn.Linear(16, 16), nn.BatchNorm1d(16), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.bn(self.proj(x)))


def test_modules_to_save_buffers_both_ways(tmp_path) -> None:
    torch.manual_seed(0)
    base = _BnNet().eval()
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    spec = dict(r=4, lora_alpha=8, target_modules=["proj"], modules_to_save=["bn"])
    ours = apply_lora(copy.deepcopy(base), LoraConfig(**spec), verbose=False)
    theirs = peft_twin(base, **spec)
    for model in (ours, theirs):  # train-mode forwards move the running statistics
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(x * 3 + 1)
        model.eval()
    save_adapter(ours, tmp_path / "ours")
    theirs.save_pretrained(str(tmp_path / "peft"))
    with torch.no_grad():
        torch.testing.assert_close(_peft_load(base, tmp_path / "ours")(x), ours(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(load_adapter(copy.deepcopy(base), tmp_path / "ours")(x), ours(x),
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(load_adapter(copy.deepcopy(base), tmp_path / "peft")(x), theirs(x),
                                   rtol=1e-5, atol=1e-5)


# -- 5. PEFT's modules_to_save rule: name.endswith(entry), no "." boundary ----------------------------------

@pytest.mark.parametrize("names", [["norm"], ["head"], ["lm_head"]])
def test_modules_to_save_matches_like_peft(names: list[str]) -> None:
    base = tiny_llama()
    spec = dict(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=names)
    ours = apply_lora(copy.deepcopy(base), LoraConfig(**spec), verbose=False)
    theirs = peft_twin(base, **spec)
    mine = sorted(n for n, p in ours.named_parameters() if p.requires_grad and "lora_" not in n)
    ref = sorted(n.removeprefix("base_model.model.").replace(".modules_to_save.default", "")
                 for n, p in theirs.named_parameters() if p.requires_grad and "lora_" not in n)
    assert mine == ref


def test_modules_to_save_that_picks_a_lora_target_names_the_overlap() -> None:
    spec = dict(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["proj"])
    with pytest.raises(TypeError):  # PEFT cannot do it either
        peft_twin(tiny_llama(), **spec)
    model = tiny_llama()
    with pytest.raises(ValueError, match=r"overlap: \['model.layers.0.self_attn.q_proj'"):
        apply_lora(model, LoraConfig(**spec), verbose=False)
    assert not lora_layers(model)


def test_targets_all_in_modules_to_save_names_the_overlap() -> None:
    spec = dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj"], modules_to_save=["q_proj", "k_proj"])
    with pytest.raises(ValueError, match="excluded"):  # PEFT refuses too
        peft_twin(tiny_llama(), **spec)
    with pytest.raises(ValueError, match="only matches modules that modules_to_save") as info:
        apply_lora(tiny_llama(), LoraConfig(**spec), verbose=False)
    assert "fused" not in str(info.value)


# -- 6.-9. inputs refused before anything changes ---------------------------------------------------------

def test_prepare_qlora_refuses_before_quantizing() -> None:
    model = tiny_llama()
    with pytest.raises(ValueError, match="skip must be a tuple"):
        prepare_qlora(model, LoraConfig(4, 8, ["q_proj"]), skip="q_proj", verbose=False)
    with pytest.raises(ValueError, match="matches no module"):
        prepare_qlora(model, LoraConfig(4, 8, ["nope"]), verbose=False)
    with pytest.raises(ValueError, match="generator"):
        prepare_qlora(model, LoraConfig(4, 8, ["q_proj"]), generator="x", verbose=False)
    assert not any(isinstance(m, QuantizedLinear) for m in model.modules())
    apply_lora(model, LoraConfig(4, 8, ["q_proj"]), verbose=False)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        prepare_qlora(model, LoraConfig(4, 8, ["v_proj"]), verbose=False)
    assert not any(isinstance(m, QuantizedLinear) for m in model.modules())


def test_merge_lora_checks_every_layer_before_merging() -> None:
    model = prepare_qlora(tiny_llama(), LoraConfig(4, 8, ["q_proj", "v_proj"]), skip=("lm_head", "q_proj"),
                          verbose=False)
    randomize_lora_(model)
    with pytest.raises(ValueError, match="cannot merge"):
        merge_lora(model)
    assert not any(layer.merged for layer in lora_layers(model).values())


@pytest.mark.parametrize("kwargs, match", [
    (dict(lora_alpha=float("nan")), "lora_alpha must be a positive"),
    (dict(lora_alpha=float("inf")), "lora_alpha must be a positive"),
    (dict(lora_alpha=-1.0), "lora_alpha must be a positive"),
    (dict(lora_alpha="8"), "lora_alpha must be a positive"),
    (dict(lora_alpha=None), "lora_alpha must be a positive"),
    (dict(lora_dropout="0.1"), "lora_dropout must be in"),
    (dict(use_rslora="yes"), "use_rslora must be a bool"),
    (dict(generator="x"), "generator must be a torch.Generator"),
])
def test_lora_linear_checks_like_lora_config(kwargs: dict, match: str) -> None:
    args = dict(r=4, lora_alpha=8.0) | kwargs
    r, alpha = args.pop("r"), args.pop("lora_alpha")
    with pytest.raises(ValueError, match=match):
        LoraLinear(nn.Linear(8, 8), r, alpha, **args)


def test_apply_lora_refuses_a_bad_generator() -> None:
    model = tiny_llama()
    with pytest.raises(ValueError, match="apply_lora generator must be a torch.Generator"):
        apply_lora(model, LoraConfig(4, 8, ["q_proj"]), generator="x", verbose=False)
    assert not lora_layers(model)


@pytest.mark.parametrize("dtype", [torch.int8, "float32"])
def test_dequantize_lora_bases_refuses_a_non_float_dtype(dtype) -> None:
    model = prepare_qlora(tiny_llama(), LoraConfig(4, 8, ["q_proj"]), verbose=False)
    with pytest.raises(ValueError, match="dtype must be a floating torch.dtype"):
        dequantize_lora_bases(model, dtype)


# -- 3. LoRA variants PEFT names by a sub-config ------------------------------------------------------------

@pytest.mark.parametrize("field", ["kasa_config", "monteclora_config", "velora_config"])
def test_lora_variant_configs_are_refused_by_name(field: str) -> None:
    # the config alone (no variant weights to trip over) loaded as plain LoRA
    with pytest.raises(ValueError, match=f"sets {field}="):
        LoraConfig.from_peft_dict({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"],
                                   field: {"beta": 0.0001}})


def test_pefts_kasa_folder_is_refused_naming_kasa(tmp_path) -> None:
    kasa = pytest.importorskip("peft.tuners.lora.config").__dict__.get("KasaConfig")
    if kasa is None:
        pytest.skip("this peft has no KaSA")
    base = tiny_llama()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"],
                                                                 kasa_config=kasa())).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="kasa_config"):
        load_adapter(copy.deepcopy(base), tmp_path)
