"""QuantizedLinear.concat_out_features and the prepared fast path: a stacked int8 / int4 layer gives exactly the
separate layers' outputs on each kernel; NF4 (blocks across rows, per-tensor double quant) is refused; the
prepared kernel arguments follow an in-place change of the codes. Reference: the separate layers, and the
dequantize-then-matmul fallback."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlcore.attention.fused_linear import LinearFusion
from mlcore.quant import QuantizedLinear


def _layers(scheme: str, bias: bool = False, **options) -> list[QuantizedLinear]:
    torch.manual_seed(0)
    return [QuantizedLinear.from_linear(nn.Linear(128, n, bias=bias), scheme, **options) for n in (128, 32, 32)]


@pytest.mark.parametrize(("scheme", "options", "kernel"), [
    ("int8", {}, "int8pack"), ("int4", {"group_size": 32}, "int4pack"),
    ("int8", {"granularity": "group", "group_size": 32}, "dequant"), ("int8", {"symmetric": False}, "dequant"),
])
def test_stacked_layer_equals_the_separate_layers(scheme: str, options: dict, kernel: str) -> None:
    layers = _layers(scheme, bias=True, **options)
    fused = QuantizedLinear.concat_out_features(layers)
    assert fused is not None and fused.out_features == 192
    x = torch.randn(2, 3, 128).bfloat16()
    with torch.no_grad():
        want = torch.cat([layer(x) for layer in layers], dim=-1)
        got = fused(x)
    assert fused.last_kernel == kernel
    assert torch.equal(got, want)


def test_nf4_and_mixed_layers_are_not_stacked() -> None:
    assert QuantizedLinear.concat_out_features(_layers("nf4")) is None
    mixed = _layers("int4", group_size=32)[:2] + _layers("int4", group_size=64)[2:]
    assert QuantizedLinear.concat_out_features(mixed) is None


def test_fusion_of_quantized_layers_follows_in_place_changes() -> None:
    layers, fusion = _layers("int8"), LinearFusion()
    x = torch.randn(1, 1, 128).bfloat16()
    with torch.no_grad():
        first = fusion(layers, False)
        assert first is not None
        layers[1].weight_data.neg_()  # in place: the stacked copy and the prepared scales must be redone
        second = fusion(layers, False)
        assert second is not first
        assert torch.equal(second(x), torch.cat([layer(x) for layer in layers], dim=-1))
    assert fusion(layers, False) is None  # grad mode: the separate layers run


def test_prepared_fast_path_equals_the_fallback_after_a_change() -> None:
    layer = _layers("int4", bias=True, group_size=32)[0]
    x = torch.randn(4, 128).bfloat16()
    with torch.no_grad():
        layer(x)
        layer.weight_scales.mul_(2.0)  # the cached repacked scales must follow
        fast = layer(x)
        assert layer.last_kernel == "int4pack"
        ref = torch.nn.functional.linear(x, layer.dequantized_weight().bfloat16(), layer.bias.bfloat16())
    torch.testing.assert_close(fast, ref, rtol=2e-2, atol=2e-2)  # bf16 scales: the kernel's only rounding
