"""quantize_model on mlcore's Transformer and on a tiny transformers LlamaForCausalLM: logits close to the
unquantized model and equal to an explicit dequantize-then-linear copy; skip, tie and shape rules."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from mlcore.quant import QuantizedLinear, dequantize, quantize, quantize_model

transformers = pytest.importorskip("transformers")

SCHEMES = [("int8", {}), ("int8", {"symmetric": False, "granularity": "group", "group_size": 32}),
           ("int4", {"group_size": 32}), ("nf4", {}), ("fp4", {})]


FAST = {("int8", 0): "int8pack", ("int4", 1): "int4pack"}  # (scheme, number of options) -> kernel


def mlcore_model(tie: bool = True) -> nn.Module:
    from mlcore.model import Transformer, TransformerConfig

    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
    if not tie:
        cfg.tie_embeddings = False
        torch.manual_seed(0)
    return Transformer(cfg).eval()


def llama_model(tie: bool = False) -> nn.Module:
    cfg = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=128, vocab_size=128, max_position_embeddings=64,
                                   tie_word_embeddings=tie)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # weights larger than the default init, so that quantization error shows in the logits
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    return out.logits if hasattr(out, "logits") else out


def dequantized_copy(model: nn.Module, scheme: str, opts: dict, skip=("lm_head",)) -> nn.Module:
    """The reference: every quantized layer replaced by a plain nn.Linear holding dequantize(quantize(w))."""
    ref = copy.deepcopy(model)
    for name, m in list(ref.named_modules()):
        if type(m) is nn.Linear and not any(name == s or name.endswith("." + s) for s in skip):
            with torch.no_grad():
                m.weight.copy_(dequantize(quantize(m.weight.detach(), scheme, **opts)))
    return ref


@pytest.mark.parametrize("build", [mlcore_model, llama_model], ids=["mlcore", "llama"])
@pytest.mark.parametrize("scheme,opts", SCHEMES)
def test_quantized_logits(build, scheme, opts):
    model = build()
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = logits(model, ids)
        reference = logits(dequantized_copy(model, scheme, opts), ids)
        exact = quantize_model(copy.deepcopy(model), scheme, prefer="dequant", **opts)
        fast = quantize_model(copy.deepcopy(model), scheme, prefer=FAST.get((scheme, len(opts)), "auto"), **opts)
        n_quant = sum(isinstance(m, QuantizedLinear) for m in fast.modules())
        assert n_quant == 14 and isinstance(fast.lm_head, nn.Linear)  # 7 per block, the head skipped
        assert torch.equal(logits(exact, ids), reference)  # fallback: exactly dequantize-then-linear
        out = logits(fast, ids)  # torch's kernels (forced in float32): equal up to float32 summation order
        torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    # close to the unquantized model: the relative logit error stays within a small multiple of the relative
    # weight error of the quantized layers (measured ratios 0.6 for mlcore's model, 1.3-2.5 for the Llama)
    rel = float((out - ref).norm() / ref.norm())
    assert 0 < rel < 3 * weight_error(model, fast), (rel, weight_error(model, fast))
    assert rel < (0.03 if scheme == "int8" else 0.3)


def weight_error(model: nn.Module, quantized: nn.Module) -> float:
    """sqrt(sum ||W_q - W||^2 / sum ||W||^2) over the layers that were quantized."""
    num = den = 0.0
    layers = dict(model.named_modules())
    for name, m in quantized.named_modules():
        if isinstance(m, QuantizedLinear):
            w = layers[name].weight.detach()
            num += float((m.dequantized_weight().float() - w).square().sum())
            den += float(w.square().sum())
    return (num / den) ** 0.5


@pytest.mark.parametrize("build", [mlcore_model, llama_model], ids=["mlcore", "llama"])
@pytest.mark.parametrize("scheme,opts,kernel", [("int8", {}, "int8pack"), ("int4", {"group_size": 32}, "int4pack")])
def test_bf16_model_runs_the_fast_kernels(build, scheme, opts, kernel):
    """A bfloat16 model takes torch's int8 / int4 kernels in every layer; its logits equal the same model
    forced onto dequantize-then-matmul up to bfloat16 rounding."""
    model = build().to(torch.bfloat16)
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    fast = quantize_model(copy.deepcopy(model), scheme, **opts)
    slow = quantize_model(copy.deepcopy(model), scheme, prefer="dequant", **opts)
    layers = [m for m in fast.modules() if isinstance(m, QuantizedLinear)]
    assert {m.kernel for m in layers} == {kernel}
    with torch.no_grad():
        y_fast, y_slow = logits(fast, ids).float(), logits(slow, ids).float()
    assert {m.last_kernel for m in layers} == {kernel}
    rel = float((y_fast - y_slow).norm() / y_slow.norm())
    print(f"bf16 {scheme} fast vs fallback: {rel:.2e}")
    assert rel < 2e-2, rel  # a few bfloat16 roundings (2^-8 each) through two blocks


def test_skip_by_suffix():
    model = quantize_model(llama_model(), "nf4", skip=("lm_head", "mlp.down_proj"))
    names = {n for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    assert len(names) == 12 and not any(n.endswith("down_proj") for n in names)
    assert type(model.model.layers[0].mlp.down_proj) is nn.Linear


@pytest.mark.parametrize("build", [mlcore_model, llama_model], ids=["mlcore", "llama"])
def test_tied_head_stays_tied_and_unquantized(build):
    model = build(tie=True)
    embed = model.get_input_embeddings().weight if hasattr(model, "get_input_embeddings") else model.embed.weight
    assert model.lm_head.weight is embed
    with pytest.warns(UserWarning, match=r"lm_head \(weight tied to another parameter\)"):
        quantize_model(model, "int8", skip=())
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is embed


def test_untied_head_quantized_when_not_skipped():
    model = quantize_model(mlcore_model(tie=False), "int8", skip=())
    assert isinstance(model.lm_head, QuantizedLinear)


def test_layers_not_divisible_by_group_size_are_kept_with_a_warning():
    model = mlcore_model()  # d_model 64, SwiGLU hidden 192: group 128 divides neither
    with pytest.warns(UserWarning, match="in_features 64 is not divisible by group_size 128"):
        quantize_model(model, "int4")  # default group_size=128
    assert not any(isinstance(m, QuantizedLinear) for m in model.modules())
    model = llama_model()  # hidden 64, intermediate 128: only down_proj (in 128) fits group 128
    with pytest.warns(UserWarning):
        quantize_model(model, "int4", group_size=128)
    names = {n for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    assert names == {"model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"}


def test_bad_arguments_change_nothing():
    model = mlcore_model()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="scheme: expected one of"):
        quantize_model(model, "int3")
    with pytest.raises(ValueError, match=r"options: \['blocksize'\] not understood by scheme 'int8'"):
        quantize_model(model, "int8", blocksize=64)
    with pytest.raises(ValueError, match="skip: expected a tuple"):
        quantize_model(model, "int8", skip="lm_head")
    with pytest.raises(ValueError, match="model: expected an nn.Module"):
        quantize_model("model", "int8")
    assert not any(isinstance(m, QuantizedLinear) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bare_linear_and_no_warning_when_nothing_skipped():
    q = quantize_model(nn.Linear(64, 32), "int8")
    assert isinstance(q, QuantizedLinear)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize_model(mlcore_model(), "nf4")


@pytest.mark.parametrize("bad", ["nan", "float64"])
def test_bad_weight_in_a_later_layer_changes_nothing(bad):
    """Every weight is checked before the first layer is replaced; the error names the layer."""
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    with torch.no_grad():
        if bad == "nan":
            model[1].weight[0, 0] = float("nan")
        else:
            model[1] = model[1].double()
    match = "1.weight: expected finite values" if bad == "nan" else r"1.weight.dtype: expected one of"
    with pytest.raises(ValueError, match=match):
        quantize_model(model, "nf4")
    assert [type(m) for m in model] == [nn.Linear, nn.Linear]


def test_meta_weights_are_refused():
    with pytest.raises(ValueError, match="w: expected a tensor with values, got one on the meta device"):
        quantize(torch.empty(16, 64, device="meta"), "int8")
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(64, 64))
    with pytest.raises(ValueError, match="0.weight: expected a tensor with values"):
        quantize_model(model, "int8")


def test_forced_kernel_a_later_layer_cannot_take_changes_nothing():
    """prefer="int8pack" needs in_features % 16 == 0: the first two layers were quantized before the third
    raised (a half-quantized model, an error without the layer's name); now nothing changes."""
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 8))
    with pytest.raises(ValueError, match="layer '4': prefer: 'int8pack' cannot run .* in_features % 16 == 0, got 24"):
        quantize_model(model, "int8", prefer="int8pack")
    assert [type(m) for m in model if not isinstance(m, nn.ReLU)] == [nn.Linear] * 3


def test_a_model_with_nothing_to_quantize_says_so():
    """GPT-2's projections are transformers' Conv1D, not nn.Linear, and its head is tied: quantize_model used to
    return it unchanged without a word."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=16)
    model = transformers.GPT2LMHeadModel(cfg)
    with pytest.warns(UserWarning, match="no layer was quantized.*Conv1D"):
        quantize_model(model, "int8")
    assert not any(isinstance(m, QuantizedLinear) for m in model.modules())
