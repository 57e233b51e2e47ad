"""AWQ (Lin et al. 2023): searched activation-aware scales beat round-to-nearest on a layer with outlier input
channels, and folding them into the previous norm / linear leaves an mlcore Transformer's logits unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mlcore.model import Transformer, TransformerConfig
from mlcore.quant.awq import (
    awq_apply_scales,
    awq_fold_scales,
    awq_quantize_model,
    awq_search,
    awq_search_scales,
    transformer_awq_mapping,
)
from mlcore.quant.int4 import int4_rtn_codes
from mlcore.quant.linear import QuantizedLinear
from mlcore.quant.model import quantize_model


def _rtn(w: torch.Tensor, group_size: int) -> torch.Tensor:
    codes, scales, zeros = int4_rtn_codes(w, group_size)
    e = torch.arange(w.shape[1]) // group_size
    return (codes.float() - zeros.float()[:, e]) * scales[:, e]


def _outlier_layer(seed: int = 0):
    """256 x 256 weight; activations with 4 input channels about 30x larger than the rest (as in LLMs)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(256, 256, generator=g) * 0.05
    scale = torch.ones(256)
    scale[torch.tensor([3, 70, 150, 201])] = 30.0

    def acts(n: int) -> torch.Tensor:
        return torch.randn(n, 256, generator=g) * scale

    return w, acts(512), acts(512)


def test_awq_beats_rtn_on_outlier_channels():
    w, x, x_test = _outlier_layer()
    found = awq_search([w], x, group_size=128)
    s = found.scales
    w_awq = _rtn(w * s, 128) / s  # what the quantized layer computes, with x / s folded upstream
    w_rtn = _rtn(w, 128)

    def rel(xx: torch.Tensor, wq: torch.Tensor) -> float:
        return ((xx @ (w - wq).t()).norm() / (xx @ w.t()).norm()).item()

    err = {"rtn": rel(x, w_rtn), "awq": rel(x, w_awq)}
    err_test = {"rtn": rel(x_test, w_rtn), "awq": rel(x_test, w_awq)}
    assert found.alpha > 0 and found.errors.shape == (20,)
    assert found.errors.min() == found.errors[int(round(found.alpha * 20))]
    # measured: relative output error 0.101 (RTN) -> 0.051 (AWQ, alpha 0.35), the same on held-out tokens
    assert err["awq"] < 0.7 * err["rtn"], err
    assert err_test["awq"] < 0.7 * err_test["rtn"], err_test
    # the salient channels got the largest scales
    assert set(torch.topk(s, 4).indices.tolist()) == {3, 70, 150, 201}
    torch.testing.assert_close(awq_search_scales([w], x, group_size=128), s)


def test_search_with_several_linears_and_alpha_zero_is_rtn():
    w, x, _ = _outlier_layer(1)
    found = awq_search([w[:100], w[100:]], x, group_size=64, n_grid=5)
    ref = ((x @ w.t() - x @ _rtn(w, 64).t()) ** 2).mean()
    torch.testing.assert_close(found.errors[0], ref)  # grid point alpha = 0 is round-to-nearest
    assert found.errors.shape == (5,) and found.scales.shape == (256,)


def _tiny_model(**overrides) -> Transformer:
    cfg = TransformerConfig(**{"vocab_size": 128, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                               "max_seq_len": 32, **overrides})
    model = Transformer(cfg).eval()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():  # non-trivial norm gains and biases, so that folding has something to get wrong
        for m in model.modules():
            if hasattr(m, "eps") and isinstance(getattr(m, "weight", None), torch.Tensor):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model


@pytest.mark.parametrize("overrides", [{}, {"norm": "layernorm", "mlp": "gelu", "activation": "gelu_tanh",
                                            "position": "learned", "n_kv_heads": 4}])
def test_folding_leaves_logits_unchanged(overrides):
    model = _tiny_model(**overrides)
    g = torch.Generator().manual_seed(5)
    calib = [torch.randint(0, 128, (2, 32), generator=g) for _ in range(2)]
    ids = torch.randint(0, 128, (2, 32), generator=g)
    with torch.no_grad():
        ref = model(ids)
        found = awq_apply_scales(model, calib, group_size=32)
        out = model(ids)
    gated = "mlp" not in overrides
    assert len(found) == 2 * (4 if gated else 3)
    assert any(not torch.allclose(r.scales, torch.ones_like(r.scales)) for r in found.values())
    assert (out - ref).abs().max() < 1e-5


def test_mapping_of_transformer():
    mapping, ties = transformer_awq_mapping(_tiny_model())
    assert mapping["layers.0.attn_norm"] == ["layers.0.attn.q_proj", "layers.0.attn.k_proj", "layers.0.attn.v_proj"]
    assert mapping["layers.1.mlp_norm"] == ["layers.1.mlp.gate_proj", "layers.1.mlp.up_proj"]
    assert mapping["layers.1.mlp.up_proj"] == ["layers.1.mlp.down_proj"]
    # GQA: 4 query heads of dim 16 read 2 value heads; query head h uses value head h // 2
    tie = ties["layers.0.attn.o_proj"]
    assert tie.tolist() == [(h // 2) * 16 + e for h in range(4) for e in range(16)]


def test_awq_quantize_model():
    model = _tiny_model()
    g = torch.Generator().manual_seed(6)
    calib = [torch.randint(0, 128, (2, 32), generator=g) for _ in range(2)]
    with torch.no_grad():
        ref = model(calib[0])
        rtn = quantize_model(copy.deepcopy(model), "int4", group_size=32)
        awq = awq_quantize_model(copy.deepcopy(model), calib, group_size=32)
        err_rtn, err_awq = (rtn(calib[0]) - ref).norm(), (awq(calib[0]) - ref).norm()
    assert sum(isinstance(m, QuantizedLinear) for m in awq.modules()) == 14
    # A random tiny model has no outlier channels to protect: measured 0.69 (AWQ) vs 0.83 (RTN) here, but the
    # per-layer objective does not promise a better end-to-end output, so only "not worse" is asserted.
    assert err_awq < 1.05 * err_rtn, (err_awq.item(), err_rtn.item())


def test_explicit_mapping_on_any_module():
    g = torch.Generator().manual_seed(7)
    model = nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.Linear(32, 16))
    x = torch.randn(64, 64, generator=g)
    ref = model(x).detach()
    awq_apply_scales(model, [x], group_size=32, mapping={"0": ["1"], "3": ["4"]})
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)


def test_bad_input():
    w, x, _ = _outlier_layer()
    with pytest.raises(ValueError, match="linear_weights is empty"):
        awq_search([], x)
    with pytest.raises(ValueError, match=r"linear_weights\[0\] must be \(out, 256\)"):
        awq_search([w[:, :128]], x)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        awq_search([w], bad)
    with pytest.raises(ValueError, match="group_size"):
        awq_search([w], x, group_size=100)
    with pytest.raises(ValueError, match="tie"):
        awq_search([w], x, tie=torch.zeros(3, dtype=torch.long))
    model = nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 16))
    with pytest.raises(ValueError, match="no mlcore Transformer blocks"):
        awq_apply_scales(model, [torch.randn(4, 64)], group_size=32)
    with pytest.raises(ValueError, match="not a submodule"):
        awq_apply_scales(model, [torch.randn(4, 64)], group_size=32, mapping={"0": ["7"]})
    with pytest.raises(ValueError, match="prev must be an nn.Linear or a norm"):
        awq_fold_scales(nn.ReLU(), [model[0]], torch.ones(64))
    with pytest.raises(ValueError, match="32 outputs but '1' reads"):
        awq_apply_scales(nn.Sequential(nn.Linear(8, 32), nn.Linear(64, 8)), [torch.randn(4, 8)], mapping={"0": ["1"]})



@pytest.mark.parametrize(("kwargs", "match"), [
    ({"x": torch.randn(0, 8)}, r"x must be \(N, in_features\) with N >= 1, got shape \(0, 8\)"),  # blamed "w"
    ({"x": torch.ones(3, 8, dtype=torch.long)}, r"x.dtype: expected floating-point"),  # was accepted
    ({"tie": torch.tensor([0, 0, 1, 1, 2, 2, 3, -1])}, r"tie: expected every value in 0 .. 3"),  # IndexError
    ({"tie": torch.tensor([0, 0, 1, 1, 2, 2, 5, 5])}, r"tie: expected every value in 0 .. 5"),  # NaN scale, blamed "w"
    ({"n_grid": True}, r"n_grid must be a positive int, got True"),  # TypeError inside torch.empty
])
def test_degenerate_search_inputs_are_named(kwargs, match):
    """An empty calibration batch, integer activations, a tie with a negative or an unused index and a bool
    n_grid failed deep (or blamed the weight) instead of naming the argument."""
    args = {"x": torch.randn(3, 8, generator=torch.Generator().manual_seed(0)), **kwargs}
    with pytest.raises(ValueError, match=match):
        awq_search([torch.randn(4, 8, generator=torch.Generator().manual_seed(1))], args.pop("x"), group_size=8,
                   **args)


@pytest.mark.parametrize("bad", [0.0, float("nan"), float("inf")])
def test_fold_refuses_scales_that_change_the_function(bad):
    """awq_fold_scales divided the previous layer by a zero, NaN or infinite scale (inf / NaN / zero weights: the
    model no longer computes the same function) without a word; refused now, the layers untouched."""
    prev, lin = nn.Linear(4, 8), nn.Linear(8, 3)
    before = (prev.weight.clone(), lin.weight.clone())
    scales = torch.ones(8)
    scales[2] = bad
    with pytest.raises(ValueError, match="scales must be finite and non-zero"):
        awq_fold_scales(prev, [lin], scales)
    assert torch.equal(prev.weight, before[0]) and torch.equal(lin.weight, before[1])

@pytest.mark.cuda
def test_cuda_fold():
    model = _tiny_model().cuda()
    ids = torch.randint(0, 128, (2, 32), device="cuda")
    with torch.no_grad():
        ref = model(ids)
        awq_apply_scales(model, [ids], group_size=32)
        assert (model(ids) - ref).abs().max() < 1e-4
