"""Bad input gives a ValueError naming the argument, what was seen and what was expected."""

from __future__ import annotations

import pytest
import torch

from mlcore.quant import QuantizedTensor, dequantize, int4_from_codes, int4_rtn_codes, quantize

W = torch.randn(8, 64)


@pytest.mark.parametrize("scheme", ["int8", "int4", "nf4", "fp4"])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int8, torch.float64, torch.bool])
def test_unsupported_dtypes(scheme, dtype):
    with pytest.raises(ValueError, match=r"w.dtype: expected one of .* got torch\."):
        quantize(W.to(dtype), scheme)


@pytest.mark.parametrize("scheme", ["int8", "int4", "nf4", "fp4"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights(scheme, bad):
    w = W.clone()
    w[3, 5] = bad
    with pytest.raises(ValueError, match="w: expected finite values, got 1 NaN/Inf of 512"):
        quantize(w, scheme)


def test_unknown_scheme_and_options():
    with pytest.raises(ValueError, match=r"scheme: expected one of \('int8', 'int4', 'nf4', 'fp4'\), got 'int2'"):
        quantize(W, "int2")
    with pytest.raises(ValueError, match=r"options: \['group'\] not understood by scheme 'int4'"):
        quantize(W, "int4", group=32)
    with pytest.raises(ValueError, match=r"options: \['symmetric'\] not understood by scheme 'nf4'"):
        quantize(W, "nf4", symmetric=False)


@pytest.mark.parametrize(("scheme", "option", "value"), [
    ("nf4", "blocksize", 64.0), ("fp4", "blocksize", True), ("nf4", "double_quant", "no"),
    ("fp4", "double_quant", 0), ("int8", "symmetric", "no"),
])
def test_option_types_are_checked(scheme, option, value):
    """A float block size, or a string where a bool belongs, is refused by name (not a TypeError deep inside,
    and not read as truthy)."""
    with pytest.raises(ValueError, match=option):
        quantize(W, scheme, **{option: value})


def test_group_sizes():
    with pytest.raises(ValueError, match="group_size: expected a divisor of the input dimension 64, got 48"):
        quantize(W, "int4", group_size=48)
    with pytest.raises(ValueError, match="group_size: expected a positive even int"):
        quantize(W, "int4", group_size=0)
    with pytest.raises(ValueError, match="group_size: expected a positive int dividing the last dimension 64"):
        quantize(W, "int8", granularity="group", group_size=24)
    with pytest.raises(ValueError, match="group_size: only used with granularity='group'"):
        quantize(W, "int8", group_size=32)
    with pytest.raises(ValueError, match="granularity: expected 'tensor', 'channel' or 'group', got 'row'"):
        quantize(W, "int8", granularity="row")
    with pytest.raises(ValueError, match=r"blocksize: expected one of \(32, 64, .*\), got 48"):
        quantize(W, "nf4", blocksize=48)
    with pytest.raises(ValueError, match=r"int4 expects a 2-D weight \(out, in\), got \(64,\)"):
        quantize(W[0], "int4", group_size=32)


def test_shapes_and_types():
    with pytest.raises(ValueError, match="w: expected a torch.Tensor, got list"):
        quantize([[1.0]], "int8")
    with pytest.raises(ValueError, match=r"w.shape: expected at least one dimension and one element, got \(\)"):
        quantize(torch.tensor(1.0), "nf4")
    with pytest.raises(ValueError, match="qt: expected a QuantizedTensor, got Tensor"):
        dequantize(W)


def test_int4_from_codes_checks():
    codes, scales, zeros = int4_rtn_codes(W, 32)
    with pytest.raises(ValueError, match=r"codes: expected values in \[0, 15\], got \[0, 16\]"):
        int4_from_codes(torch.where(codes == codes.max(), 16, codes.long()), scales, zeros, 32, torch.float32)
    with pytest.raises(ValueError, match="zeros: expected integer zero points"):
        int4_from_codes(codes, scales, zeros.float() + 0.5, 32, torch.float32)
    with pytest.raises(ValueError, match=r"zeros: expected values in \[0, 15\]"):
        int4_from_codes(codes, scales, zeros.long() + 16, 32, torch.float32)
    with pytest.raises(ValueError, match=r"scales.shape: expected \(8, 2\), got \(8, 4\)"):
        int4_from_codes(codes, torch.ones(8, 4), zeros, 32, torch.float32)
    with pytest.raises(ValueError, match="codes.dtype: expected an integer dtype"):
        int4_from_codes(codes.float(), scales, zeros, 32, torch.float32)
    with pytest.raises(ValueError, match="scales: expected finite"):
        int4_from_codes(codes, scales * float("nan"), zeros, 32, torch.float32)
    with pytest.raises(ValueError, match="dtype: expected float32, float16 or bfloat16"):
        int4_from_codes(codes, scales, zeros, 32, torch.int8)
    with pytest.raises(ValueError, match=r"w.shape: expected \(out, in\)"):
        int4_rtn_codes(W[None], 32)


def test_inconsistent_quantized_tensor():
    qt = quantize(W, "int4", group_size=32)
    tensors, meta = qt.state_dict()
    with pytest.raises(ValueError, match=r"scales.shape: expected \(8, 2\), got \(8, 1\)"):
        QuantizedTensor.from_state_dict({**tensors, "scales": tensors["scales"][:, :1]}, meta)
    with pytest.raises(ValueError, match="metadata\\['dtype'\\]: expected one of"):
        QuantizedTensor.from_state_dict(tensors, {**meta, "dtype": "float64"})
    with pytest.raises(ValueError, match="tensors: missing 'data'"):
        QuantizedTensor.from_state_dict({"scales": tensors["scales"]}, meta)
    with pytest.raises(ValueError, match="metadata: expected the keys"):
        QuantizedTensor.from_state_dict(tensors, {"scheme": "int4"})
    with pytest.raises(ValueError, match="zeros: expected uint8"):
        QuantizedTensor.from_state_dict({k: v for k, v in tensors.items() if k != "zeros"}, meta)


@pytest.mark.parametrize("group_size", ["32", [32], 16, True])
def test_group_size_of_a_per_channel_int8_tensor_must_be_none(group_size):
    """int8 per channel / tensor has no groups: a group size in its metadata was ignored (a number) or raised
    TypeError (a string or list, from ``k // g``); it is a ValueError naming group_size now."""
    tensors, meta = quantize(W, "int8").state_dict()
    with pytest.raises(ValueError, match="group_size: expected None for granularity 'channel'"):
        QuantizedTensor.from_state_dict(tensors, {**meta, "group_size": group_size})


def test_bool_group_size_is_refused():
    tensors, meta = quantize(W, "int4", group_size=32).state_dict()
    with pytest.raises(ValueError, match="group_size: expected a positive int, got True"):
        QuantizedTensor.from_state_dict(tensors, {**meta, "group_size": True})


def test_quantized_tensor_to_a_dtype_is_refused():
    """``qt.to(torch.float16)`` cast the int8 codes to floats and gave a QuantizedTensor that failed later, at
    dequantize, with a layout error; the dtype is refused where it is passed."""
    qt = quantize(torch.randn(32, 64, generator=torch.Generator().manual_seed(0)), "int8")
    with pytest.raises(ValueError, match=r"device: expected a torch.device or device string, got torch.float16"):
        qt.to(torch.float16)
    assert torch.equal(dequantize(qt.to("cpu")), dequantize(qt))
