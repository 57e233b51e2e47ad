"""mlcore's LoRA against the real ``peft``: same A and B -> same logits, same A/B gradients, same trainable
parameter counts and targeted modules, same merged weights; on transformers' Llama and on mlcore's Transformer."""

from __future__ import annotations

import copy
import math

import peft
import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mlcore.attention import MultiHeadAttention
from mlcore.finetune import (
    LoraConfig,
    LoraLinear,
    apply_lora,
    find_targets,
    lora_layers,
    merge_lora,
    trainable_parameters,
    unmerge_lora,
)
from tests.finetune._lora_testutils import (
    logits_of,
    make,
    peft_layers,
    peft_twin,
    randomize_lora_,
    tiny_llama,
    tiny_mlcore,
    tiny_qwen2,
    token_ids,
)

TARGETS = {"llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
           "mlcore": ["q_proj", "v_proj", "down_proj"]}


def _pair(kind: str, *, r: int = 4, alpha: float = 8, rslora: bool = False, dropout: float = 0.0,
          targets=None) -> tuple[nn.Module, nn.Module, nn.Module]:
    base = make(kind)
    targets = TARGETS[kind] if targets is None else targets
    ours = apply_lora(copy.deepcopy(base), LoraConfig(r, alpha, targets, lora_dropout=dropout, use_rslora=rslora),
                      verbose=False)
    randomize_lora_(ours)
    theirs = peft_twin(base, ours, r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=dropout,
                       use_rslora=rslora)
    return base, ours, theirs


def _loss(logits: torch.Tensor) -> torch.Tensor:
    w = torch.randn(logits.shape, generator=torch.Generator().manual_seed(9))
    return (logits * w).sum()


@pytest.mark.parametrize("kind", ["llama", "mlcore"])
@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_outputs_and_grads_equal_peft(kind: str, rslora: bool, mode: str) -> None:
    base, ours, theirs = _pair(kind, r=4, alpha=12, rslora=rslora)
    for m in (ours, theirs):
        m.train(mode == "train")
    ids = token_ids()
    mine, ref = logits_of(ours, ids), logits_of(theirs, ids)
    torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the adapters matter: the test would notice a missing or mis-scaled LoRA path
        assert (mine - logits_of(base, ids)).abs().max() > 1e-2
    _loss(mine).backward()
    _loss(ref).backward()
    their_layers = peft_layers(theirs)
    for name, layer in lora_layers(ours).items():
        torch.testing.assert_close(layer.lora_A.weight.grad, their_layers[name].lora_A["default"].weight.grad,
                                   rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(layer.lora_B.weight.grad, their_layers[name].lora_B["default"].weight.grad,
                                   rtol=1e-4, atol=1e-5)
        assert layer.lora_B.weight.grad.abs().max() > 0
    assert all(p.grad is None for n, p in ours.named_parameters() if ".lora_" not in n)


@pytest.mark.parametrize("kind", ["llama", "mlcore"])
def test_dropout_eval_equals_peft_and_train_is_stochastic(kind: str) -> None:
    _, ours, theirs = _pair(kind, dropout=0.3)
    ids = token_ids()
    ours.eval(), theirs.eval()
    with torch.no_grad():
        torch.testing.assert_close(logits_of(ours, ids), logits_of(theirs, ids), rtol=1e-5, atol=1e-5)
        # dropout hits the LoRA input only: the same RNG state gives PEFT's numbers in training mode too
        ours.train(), theirs.train()
        torch.manual_seed(3)
        a = logits_of(ours, ids)
        torch.manual_seed(3)
        b = logits_of(theirs, ids)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        assert (a - logits_of(ours.eval(), ids)).abs().max() > 1e-4


@pytest.mark.parametrize("rslora", [False, True])
def test_scaling_is_alpha_over_r_or_sqrt_r(rslora: bool) -> None:
    _, ours, theirs = _pair("llama", r=9, alpha=6, rslora=rslora)
    want = 6 / (math.sqrt(9) if rslora else 9)
    for name, layer in lora_layers(ours).items():
        assert layer.scaling == pytest.approx(want)
        assert peft_layers(theirs)[name].scaling["default"] == pytest.approx(want)


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], r".*\.mlp\.(up|down)_proj", "all-linear",
                                     ["self_attn.o_proj", "model.layers.1.mlp.gate_proj"]])
def test_targets_and_trainable_count_equal_peft_on_llama(targets) -> None:
    base = tiny_llama()
    ours = apply_lora(copy.deepcopy(base), LoraConfig(8, 16, targets), verbose=False)
    theirs = peft_twin(base, r=8, lora_alpha=16, target_modules=targets)
    assert set(lora_layers(ours)) == set(peft_layers(theirs))
    assert trainable_parameters(ours) == theirs.get_nb_trainable_parameters()
    assert trainable_parameters(ours)[0] > 0


def test_all_linear_on_mlcore_skips_the_output_head_and_counts_equal_peft() -> None:
    base = tiny_mlcore()
    ours = apply_lora(copy.deepcopy(base), LoraConfig(4, 8, "all-linear"), verbose=False)
    # PEFT does not know mlcore's head (not a PreTrainedModel): its all-linear includes lm_head
    theirs = peft_twin(base, r=4, lora_alpha=8, target_modules="all-linear")
    assert set(peft_layers(theirs)) - set(lora_layers(ours)) == {"lm_head"}
    assert len(lora_layers(ours)) == 2 * 7
    explicit = peft_twin(base, r=4, lora_alpha=8, target_modules=sorted(lora_layers(ours)))
    assert trainable_parameters(ours) == explicit.get_nb_trainable_parameters()
    # by hand: r * (in + out) per layer; q: 64->64, k, v: 64->32, o: 64->64, gate, up: 64->192, down: 192->64
    per_layer = 4 * ((64 + 64) + 2 * (64 + 32) + (64 + 64) + 2 * (64 + 192) + (192 + 64))
    assert trainable_parameters(ours)[0] == 2 * per_layer


@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_bias_options_train_the_same_parameters_as_peft(bias: str) -> None:
    base = tiny_qwen2()
    ours = apply_lora(copy.deepcopy(base), LoraConfig(4, 8, ["q_proj"], bias=bias), verbose=False)
    theirs = peft_twin(base, r=4, lora_alpha=8, target_modules=["q_proj"], bias=bias)
    mine = {n for n, p in ours.named_parameters() if p.requires_grad}
    ref = {n.removeprefix("base_model.model.").replace(".default", "")
           for n, p in theirs.named_parameters() if p.requires_grad}
    assert mine == ref and any("bias" in n for n in mine)
    assert trainable_parameters(ours) == theirs.get_nb_trainable_parameters()


@pytest.mark.parametrize("kind", ["llama", "mlcore"])
@pytest.mark.parametrize("rslora", [False, True])
def test_merged_equals_unmerged_and_peft_merge(kind: str, rslora: bool) -> None:
    base, ours, theirs = _pair(kind, rslora=rslora)
    ids = token_ids()
    before = {n: m.base_layer.weight.detach().clone() for n, m in lora_layers(ours).items()}
    with torch.no_grad():
        unmerged = logits_of(ours, ids)
        merge_lora(ours)
        merged = logits_of(ours, ids)
        torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)
        ref = theirs.merge_and_unload()
        ref_layers = dict(ref.named_modules())
        for name, layer in lora_layers(ours).items():
            torch.testing.assert_close(layer.base_layer.weight, ref_layers[name].weight, rtol=1e-6, atol=1e-6)
            assert (layer.base_layer.weight - before[name]).abs().max() > 1e-3
        unmerge_lora(ours)
        for name, layer in lora_layers(ours).items():
            torch.testing.assert_close(layer.base_layer.weight, before[name], rtol=0, atol=1e-6)
        torch.testing.assert_close(logits_of(ours, ids), unmerged, rtol=1e-5, atol=1e-5)
        merge_lora(ours, unload=True)
        assert not lora_layers(ours)
        torch.testing.assert_close(logits_of(ours, ids), unmerged, rtol=1e-4, atol=1e-4)


def test_init_starts_at_the_base_model_with_pefts_distribution() -> None:
    base = tiny_llama()
    ours = apply_lora(copy.deepcopy(base), LoraConfig(8, 16, ["q_proj", "down_proj"]), verbose=False,
                      generator=torch.Generator().manual_seed(0))
    theirs = peft_twin(base, r=8, lora_alpha=16, target_modules=["q_proj", "down_proj"])
    ids = token_ids()
    with torch.no_grad():
        torch.testing.assert_close(logits_of(ours, ids), logits_of(base, ids), rtol=0, atol=0)
    for name, layer in lora_layers(ours).items():
        ref = peft_layers(theirs)[name].lora_A["default"].weight
        bound = 1 / math.sqrt(layer.in_features)  # kaiming_uniform(a=sqrt(5)) on (r, in)
        assert layer.lora_A.weight.abs().max() <= bound and ref.abs().max() <= bound
        assert layer.lora_A.weight.std().item() == pytest.approx(ref.std().item(), rel=0.25)
        assert torch.count_nonzero(layer.lora_B.weight) == 0
    again = apply_lora(copy.deepcopy(base), LoraConfig(8, 16, ["q_proj", "down_proj"]), verbose=False,
                       generator=torch.Generator().manual_seed(0))
    for name, layer in lora_layers(again).items():
        assert torch.equal(layer.lora_A.weight, lora_layers(ours)[name].lora_A.weight)
    gauss = apply_lora(copy.deepcopy(base), LoraConfig(8, 16, ["q_proj"], init="gaussian"), verbose=False)
    a = next(iter(lora_layers(gauss).values())).lora_A.weight
    assert a.std().item() == pytest.approx(1 / 8, rel=0.2)


class _FusedBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(64, 4, n_kv_heads=2, fused_qkv=True, causal=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x)


def test_fused_qkv_is_targetable_and_equals_peft() -> None:
    torch.manual_seed(0)
    base = _FusedBlock().eval()
    ours = apply_lora(copy.deepcopy(base), LoraConfig(4, 8, ["qkv_proj"]), verbose=False)
    randomize_lora_(ours)
    theirs = peft_twin(base, ours, r=4, lora_alpha=8, target_modules=["qkv_proj"])
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    assert find_targets(base, LoraConfig(4, 8, "all-linear")) == ["attn.qkv_proj", "attn.o_proj"]


def test_gpt2_conv1d_equals_peft_and_merges_transposed() -> None:
    cfg = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=16)
    base = transformers.GPT2LMHeadModel(cfg).eval()
    ours = apply_lora(copy.deepcopy(base), LoraConfig(4, 8, ["c_attn", "c_fc"]), verbose=False)
    randomize_lora_(ours)
    theirs = peft_twin(base, ours, r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"])  # PEFT: fan_in_fan_out
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = theirs(ids).logits
        torch.testing.assert_close(ours(ids).logits, ref, rtol=1e-5, atol=1e-5)
        merge_lora(ours)
        torch.testing.assert_close(ours(ids).logits, ref, rtol=1e-4, atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(n_in=st.integers(1, 24), n_out=st.integers(1, 24), r=st.integers(1, 8),
       alpha=st.floats(0.5, 64), rslora=st.booleans(), bias=st.booleans())
def test_lora_linear_equals_peft_linear(n_in: int, n_out: int, r: int, alpha: float, rslora: bool,
                                        bias: bool) -> None:
    g = torch.Generator().manual_seed(n_in * 100 + n_out)
    base = nn.Linear(n_in, n_out, bias=bias)
    layer = LoraLinear(copy.deepcopy(base), r, alpha, use_rslora=rslora)
    with torch.no_grad():
        layer.lora_B.weight.copy_(torch.randn(n_out, r, generator=g))
    holder = nn.Sequential()
    holder.add_module("proj", copy.deepcopy(base))
    peft.inject_adapter_in_model(peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"],
                                                 use_rslora=rslora), holder)
    with torch.no_grad():
        holder.proj.lora_A["default"].weight.copy_(layer.lora_A.weight)
        holder.proj.lora_B["default"].weight.copy_(layer.lora_B.weight)
    x = torch.randn(3, n_in, generator=g)
    torch.testing.assert_close(layer(x), holder(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_merge_into_a_half_precision_weight_rounds_once_as_peft(dtype) -> None:
    """The float32 delta is added to a bf16 / fp16 weight in place: W0 + s B A rounded once, element for element
    PEFT's merge_and_unload (rounding the delta to the weight's dtype first differs in ~30% of the elements)."""
    torch.manual_seed(0)
    base = nn.Sequential()
    base.add_module("proj", nn.Linear(64, 64))
    base = base.to(dtype)
    ours = apply_lora(copy.deepcopy(base), LoraConfig(4, 8, ["proj"]), verbose=False)
    with torch.no_grad():
        ours.proj.lora_B.weight.normal_(0, 0.2)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["proj"]))
    with torch.no_grad():
        theirs.base_model.model.proj.lora_A["default"].weight.copy_(ours.proj.lora_A.weight)
        theirs.base_model.model.proj.lora_B["default"].weight.copy_(ours.proj.lora_B.weight)
    exact = (base.proj.weight.float() + ours.proj.delta_weight()).to(dtype)
    mine = merge_lora(copy.deepcopy(ours), unload=True).proj.weight
    assert torch.equal(mine, theirs.merge_and_unload().proj.weight)
    assert torch.equal(mine, exact)


@pytest.mark.parametrize("kind, tie, saved", [
    ("mlcore", True, ["norm"]), ("llama", False, ["lm_head"]), ("llama", True, ["lm_head", "embed_tokens"]),
    ("gpt2", True, ["lm_head"]), ("gpt2", True, ["ln_f"]),
])
def test_trainable_and_total_counts_with_modules_to_save_equal_peft(kind: str, tie: bool, saved: list) -> None:
    # PEFT keeps the frozen original of each module to save beside the trained copy and counts both in "all
    # params"; mlcore's total left the originals out (e.g. 78,656 vs PEFT's 78,976 for "norm" on Llama).
    base = tiny_llama(tie_word_embeddings=tie) if kind == "llama" else make(kind)
    targets = ["c_attn"] if kind == "gpt2" else ["q_proj"]
    ours = apply_lora(copy.deepcopy(base), LoraConfig(2, 4, targets, modules_to_save=saved), verbose=False)
    theirs = peft_twin(base, r=2, lora_alpha=4, target_modules=targets, modules_to_save=saved)
    assert trainable_parameters(ours) == tuple(theirs.get_nb_trainable_parameters())
