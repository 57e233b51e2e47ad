"""QuantizedLinear: torch's CPU int8 / int4 kernels equal the dequantize-then-matmul fallback; kernel choice,
``prefer``, buffers, autograd through the fallback, and device moves."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlcore.quant import QuantizedLinear, dequantize, quantize

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# fast and fallback results may differ by rounding: float32 sums K products in another order; bfloat16 /
# float16 round the output (and, for int4, torch's scale and zero terms) once more
ULPS = {torch.float32: 8, torch.bfloat16: 2, torch.float16: 2}


def _linear(in_f: int, out_f: int, dtype: torch.dtype, seed: int = 0, bias: bool = True) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out_f, in_f, generator=g) * 0.05)
        if bias:
            lin.bias.copy_(torch.randn(out_f, generator=g) * 0.1)
    return lin.to(dtype)


def _assert_fast_equals_fallback(lin: nn.Linear, scheme: str, kernel: str, dtype: torch.dtype, **opts) -> None:
    fast = QuantizedLinear.from_linear(lin, scheme, prefer=kernel, **opts)
    slow = QuantizedLinear.from_linear(lin, scheme, prefer="dequant", **opts)
    auto = QuantizedLinear.from_linear(lin, scheme, **opts)
    assert fast.kernel == kernel and slow.kernel == "dequant"
    assert auto.kernel == (kernel if dtype == torch.bfloat16 else "dequant")  # fast only with bf16 activations
    g = torch.Generator().manual_seed(1)
    for batch in ((1,), (16,), (2, 3)):  # decode (1 token), a prefill chunk, and a (B, T) input
        x = torch.randn(*batch, lin.in_features, generator=g).to(dtype)
        y_fast, y_slow = fast(x), slow(x)
        assert fast.last_kernel == kernel and slow.last_kernel == "dequant"
        assert y_fast.shape == (*batch, lin.out_features) and y_fast.dtype == dtype
        scale = float(y_slow.float().abs().max())
        tol = ULPS[dtype] * torch.finfo(dtype).eps * scale
        diff = float((y_fast.float() - y_slow.float()).abs().max())
        assert diff <= tol, (scheme, kernel, dtype, batch, diff, tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("granularity", ["channel", "tensor"])
@pytest.mark.parametrize("in_f", [48, 256])
def test_int8pack_equals_fallback(dtype, granularity, in_f):
    _assert_fast_equals_fallback(_linear(in_f, 40, dtype), "int8", "int8pack", dtype, granularity=granularity)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group_size", [32, 64, 128, 256])
def test_int4pack_equals_fallback(dtype, group_size):
    _assert_fast_equals_fallback(_linear(256, 48, dtype), "int4", "int4pack", dtype, group_size=group_size)


def test_fallback_is_dequantize_then_linear():
    lin = _linear(64, 24, torch.float32)
    x = torch.randn(5, 64)
    for scheme, opts in [("int8", {"symmetric": False}), ("int4", {"group_size": 32}), ("nf4", {}), ("fp4", {})]:
        q = QuantizedLinear.from_linear(lin, scheme, **opts)
        assert q.kernel == "dequant"
        expected = nn.functional.linear(x, dequantize(quantize(lin.weight.detach(), scheme, **opts)), lin.bias)
        assert torch.equal(q(x), expected), scheme


def test_kernel_choice():
    bf16 = torch.bfloat16
    cases = [
        (_linear(64, 32, bf16), "int8", {}, "int8pack"),
        (_linear(64, 32, bf16), "int8", {"symmetric": False}, "dequant"),  # zero points
        (_linear(64, 32, bf16), "int8", {"granularity": "group", "group_size": 32}, "dequant"),
        (_linear(24, 32, bf16), "int8", {}, "dequant"),  # in_features % 16 != 0
        (_linear(64, 32, bf16), "int4", {"group_size": 32}, "int4pack"),
        (_linear(64, 24, bf16), "int4", {"group_size": 32}, "dequant"),  # out_features % 16 != 0
        (_linear(64, 32, bf16), "int4", {"group_size": 16}, "dequant"),  # group size below 32
        (_linear(64, 32, bf16), "nf4", {}, "dequant"),
    ]
    for lin, scheme, opts, kernel in cases:
        q = QuantizedLinear.from_linear(lin, scheme, **opts)
        assert q.compute_dtype == bf16 and q.kernel == kernel, (scheme, opts, lin)
        assert f"kernel={kernel}" in repr(q)
        assert q.kernel_for(torch.float32) == "dequant" and q.kernel_for(torch.float64) == "dequant"


def test_compute_dtype_follows_the_model():
    """Quantized from a float32 layer, then the model is cast to bfloat16: the int8 kernel takes over."""
    q = QuantizedLinear.from_linear(_linear(64, 32, torch.float32), "int8")
    assert q.compute_dtype == torch.float32 and q.kernel == "dequant"
    q.to(torch.bfloat16)
    assert q.compute_dtype == torch.bfloat16 and q.kernel == "int8pack"
    q(torch.randn(2, 64, dtype=torch.bfloat16))
    assert q.last_kernel == "int8pack"


def test_prefer():
    lin = _linear(64, 32, torch.float32)
    assert QuantizedLinear.from_linear(lin, "int8", prefer="int8pack").kernel == "int8pack"
    assert QuantizedLinear.from_linear(lin, "int8", prefer="dequant").kernel == "dequant"
    with pytest.raises(ValueError, match="prefer: 'int4pack' cannot run.*int4"):
        QuantizedLinear.from_linear(lin, "int8", prefer="int4pack")
    with pytest.raises(ValueError, match="prefer: 'int8pack' cannot run.*in_features % 16"):
        QuantizedLinear.from_linear(_linear(24, 32, torch.float32), "int8", prefer="int8pack")
    with pytest.raises(ValueError, match="prefer: expected 'auto'"):
        QuantizedLinear.from_linear(lin, "int8", prefer="fastest")


def test_forced_fast_path_with_float64_activations_warns_and_falls_back():
    q = QuantizedLinear.from_linear(_linear(64, 32, torch.float32), "int4", group_size=32, prefer="int4pack")
    x = torch.randn(3, 64, dtype=torch.float64)
    with pytest.warns(UserWarning, match="prefer='int4pack' cannot run .activations torch.float64"):
        y = q(x)
    assert q.last_kernel == "dequant" and y.dtype == torch.float64
    torch.testing.assert_close(y, nn.functional.linear(x, q.dequantized_weight().double(), q.bias.double()))


def test_forced_fast_path_off_cpu_warns_and_falls_back():
    """A fast path asked for, then the module moved off the CPU: documented fallback with one warning."""
    q = QuantizedLinear.from_linear(_linear(64, 32, torch.float32), "int8", prefer="int8pack").to("meta")
    assert q.kernel == "dequant"
    with pytest.warns(UserWarning, match="prefer='int8pack' cannot run"):
        y = q(torch.randn(3, 64, device="meta"))
    assert y.shape == (3, 32) and y.device.type == "meta"


def test_buffers_not_parameters_and_dtype_moves():
    lin = _linear(64, 32, torch.float32)
    q = QuantizedLinear.from_linear(lin, "nf4")
    assert [n for n, _ in q.named_parameters()] == ["bias"]
    assert {"weight_data", "weight_scales", "weight_nested_absmax", "weight_nested_offset"} <= set(q.state_dict())
    x = torch.randn(4, 64)
    before = q(x)
    q.to(torch.bfloat16)  # the bias follows; codes and float32 scales keep their dtypes
    assert q.weight_scales.dtype == torch.uint8 and q.weight_nested_absmax.dtype == torch.float32
    assert q.bias.dtype == torch.bfloat16
    torch.testing.assert_close(q(x.bfloat16()).float(), before, rtol=2e-2, atol=2e-2)


def test_gradient_flows_to_the_input_through_the_fallback():
    lin = _linear(64, 32, torch.float32)
    q = QuantizedLinear.from_linear(lin, "int8", prefer="int8pack")  # a needs-grad input takes the fallback
    x = torch.randn(3, 64, requires_grad=True)
    q(x).sum().backward()
    assert q.last_kernel == "dequant"
    w = dequantize(q.quantized_weight)
    torch.testing.assert_close(x.grad, w.sum(0).expand(3, 64))


def test_bad_input_shape():
    q = QuantizedLinear.from_linear(_linear(64, 32, torch.float32), "int8")
    with pytest.raises(ValueError, match=r"x.shape: expected \(..., 64\)"):
        q(torch.randn(3, 63))
    with pytest.raises(ValueError, match="linear: expected an nn.Linear"):
        QuantizedLinear.from_linear(nn.Conv1d(3, 3, 1), "int8")
    with pytest.raises(ValueError, match="weight: expected a QuantizedTensor"):
        QuantizedLinear(torch.randn(3, 3))
    with pytest.raises(ValueError, match="bias.shape"):
        QuantizedLinear(quantize(torch.randn(8, 64), "int8"), torch.zeros(7))


@pytest.mark.cuda
@pytest.mark.parametrize("scheme,opts", [("int8", {}), ("int4", {"group_size": 64}), ("nf4", {})])
def test_cuda_fallback_equals_cpu(scheme, opts):
    lin = _linear(128, 64, torch.float32)
    cpu = QuantizedLinear.from_linear(lin, scheme, prefer="dequant", **opts)
    gpu = QuantizedLinear.from_linear(lin, scheme, **opts).to("cuda")
    assert gpu.kernel == "dequant"
    x = torch.randn(4, 128)
    torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("scheme", "opts"), [("int8", {}), ("int4", {"group_size": 32}), ("nf4", {})])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_non_float_activations_are_refused(scheme, opts, dtype):
    """Like nn.Linear (dtype mismatch): the weight cast to an integer dtype would truncate to zeros."""
    lin = _linear(64, 16, torch.float32)
    x = torch.randint(-3, 4, (2, 64)).to(dtype)
    with pytest.raises(RuntimeError):
        lin(x)
    with pytest.raises(ValueError, match=r"x.dtype: expected a floating-point tensor, got torch\."):
        QuantizedLinear.from_linear(lin, scheme, **opts)(x)


def test_bias_must_be_a_tensor():
    with pytest.raises(ValueError, match="bias: expected a torch.Tensor or None, got list"):
        QuantizedLinear(quantize(torch.randn(16, 64), "int8"), [0.0] * 16)  # type: ignore[arg-type]
