"""int8 and int4 round to nearest: half-a-step reconstruction bound (property tests), torch's quantizers agree
on the codes, and ``int4_from_codes`` follows ``w = (code - zero) * scale``."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlcore.quant import dequantize, int4_from_codes, int4_rtn_codes, quantize, rtn_quantize
from mlcore.quant.int4 import int4_codes


def _weight(rows: int, cols: int, seed: int, spread: float, shift: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * spread + shift
    w[0, 0] = 0.0  # an exact zero must stay exactly zero
    return w


def _per_element(scales: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Broadcast scales (1, 1) per tensor, (R, 1) per channel or (R, G) per group to (R, K)."""
    return scales.repeat_interleave(cols // scales.shape[-1], dim=-1).expand(rows, cols)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 9), groups=st.integers(1, 4), group_size=st.sampled_from([2, 8, 32]),
       granularity=st.sampled_from(["tensor", "channel", "group"]), symmetric=st.booleans(),
       seed=st.integers(0, 2**31 - 1), spread=st.sampled_from([1e-3, 1.0, 50.0]),
       shift=st.sampled_from([0.0, 3.0, -1.0]))
def test_int8_within_half_a_step(rows, groups, group_size, granularity, symmetric, seed, spread, shift):
    cols = groups * group_size
    w = _weight(rows, cols, seed, spread, shift)
    opts = {"group_size": group_size} if granularity == "group" else {}
    qt = quantize(w, "int8", symmetric=symmetric, granularity=granularity, **opts)
    s = _per_element(qt.scales, rows, cols)
    err = (dequantize(qt) - w).abs()
    assert bool((err <= s / 2 * (1 + 1e-5) + 1e-7 * w.abs()).all()), float((err / s).max())
    assert dequantize(qt)[0, 0] == 0.0
    # the grid is as fine as the range allows: 127 (symmetric) or 255 steps span the group's range
    assert qt.data.dtype == (torch.int8 if symmetric else torch.uint8)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 9), groups=st.integers(1, 4), group_size=st.sampled_from([2, 32, 64, 128]),
       seed=st.integers(0, 2**31 - 1), spread=st.sampled_from([1e-3, 1.0, 50.0]),
       shift=st.sampled_from([0.0, 3.0, -1.0]))
def test_int4_within_half_a_step(rows, groups, group_size, seed, spread, shift):
    cols = groups * group_size
    w = _weight(rows, cols, seed, spread, shift)
    qt = quantize(w, "int4", group_size=group_size)
    s = qt.scales.repeat_interleave(group_size, dim=-1)
    err = (dequantize(qt) - w).abs()
    assert bool((err <= s / 2 * (1 + 1e-5) + 1e-7 * w.abs()).all()), float((err / s).max())
    assert dequantize(qt)[0, 0] == 0.0
    codes = int4_codes(qt)
    assert int(codes.max()) <= 15 and qt.data.shape == (rows, cols // 2)


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_int8_codes_equal_torch_quantizers():
    """Given our scales and zero points, torch's own affine quantizers produce the same integer codes."""
    w = _weight(16, 64, 0, 1.0, 0.3)
    sym = quantize(w, "int8")  # symmetric per output channel
    ref = torch.quantize_per_channel(w, sym.scales.reshape(-1).double(), torch.zeros(16, dtype=torch.long), 0, torch.qint8)
    assert torch.equal(sym.data, ref.int_repr())
    asym = quantize(w, "int8", symmetric=False)
    ref = torch.quantize_per_channel(w, asym.scales.reshape(-1).double(), asym.zeros.reshape(-1).long(), 0, torch.quint8)
    assert torch.equal(asym.data, ref.int_repr())
    tensor = quantize(w, "int8", symmetric=False, granularity="tensor")
    ref = torch.quantize_per_tensor(w, float(tensor.scales), int(tensor.zeros), torch.quint8)
    assert torch.equal(tensor.data, ref.int_repr())
    torch.testing.assert_close(dequantize(tensor), ref.dequantize(), rtol=0, atol=1e-6)


def test_int8_symmetric_scale_is_absmax_over_127():
    w = torch.tensor([[0.5, -1.27, 0.0, 0.01], [2.54, 1.0, -0.5, 0.0]])
    qt = quantize(w, "int8")
    torch.testing.assert_close(qt.scales, torch.tensor([[1.27], [2.54]]) / 127)
    assert qt.data[0].tolist() == [50, -127, 0, 1] and qt.data[1].tolist() == [127, 50, -25, 0]


def test_int4_from_codes_convention():
    """Dequantized w = (code - zero) * scale, codes packed two per byte (first in the high nibble)."""
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 16, (6, 64), generator=g)
    scales = torch.rand(6, 2, generator=g) + 0.1
    zeros = torch.randint(0, 16, (6, 2), generator=g).float()  # integer-valued floats are accepted
    qt = int4_from_codes(codes, scales, zeros, 32, torch.bfloat16)
    expected = (codes.float() - zeros.repeat_interleave(32, 1)) * scales.repeat_interleave(32, 1)
    assert torch.equal(dequantize(qt), expected.to(torch.bfloat16))
    assert qt.data[0, 0].item() == (int(codes[0, 0]) << 4) | int(codes[0, 1])
    assert qt.dtype == torch.bfloat16 and qt.shape == (6, 64) and qt.zeros.dtype == torch.uint8


def test_int4_rtn_codes_round_trip():
    w = _weight(8, 256, 3, 0.02, 0.0)
    codes, scales, zeros = int4_rtn_codes(w, 64)
    assert codes.shape == (8, 256) and scales.shape == zeros.shape == (8, 4)
    qt = int4_from_codes(codes, scales, zeros, 64, w.dtype)
    assert torch.equal(dequantize(qt), dequantize(quantize(w, "int4", group_size=64)))
    # each group's range, widened to contain 0, is split into 15 steps
    grp = w.reshape(8, 4, 64)
    span = grp.amax(-1).clamp(min=0) - grp.amin(-1).clamp(max=0)
    torch.testing.assert_close(scales, span / 15)


@pytest.mark.parametrize("scheme,opts", [("int8", {}), ("int8", {"symmetric": False}),
                                         ("int4", {"group_size": 32}), ("nf4", {}), ("fp4", {})])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dequantize_restores_shape_and_dtype(scheme, opts, dtype):
    w = _weight(16, 64, 4, 0.1, 0.0).to(dtype)
    qt = quantize(w, scheme, **opts)
    out = dequantize(qt)
    assert out.shape == w.shape and out.dtype == dtype
    rel = float((out.float() - w.float()).norm() / w.float().norm())
    assert rel < {"int8": 0.01, "int4": 0.12, "nf4": 0.12, "fp4": 0.2}[scheme]


def test_all_zero_weight_is_exact():
    for scheme, opts in [("int8", {}), ("int8", {"symmetric": False}), ("int4", {"group_size": 32}),
                         ("nf4", {}), ("fp4", {"double_quant": False})]:
        w = torch.zeros(4, 64)
        assert torch.equal(dequantize(quantize(w, scheme, **opts)), w), scheme


def test_state_dict_round_trip_and_to():
    w = _weight(16, 128, 5, 0.1, 0.0)
    for scheme, opts in [("int8", {"granularity": "group", "group_size": 32}), ("int4", {"group_size": 64}),
                         ("nf4", {}), ("fp4", {"blocksize": 128})]:
        qt = quantize(w, scheme, **opts)
        tensors, meta = qt.state_dict()
        meta = json.loads(json.dumps(meta))  # JSON-able
        back = type(qt).from_state_dict(tensors, meta)
        assert torch.equal(dequantize(back), dequantize(qt))
        moved = qt.to("cpu")
        assert torch.equal(dequantize(moved), dequantize(qt)) and moved.nbytes == qt.nbytes


@pytest.mark.parametrize(("scheme", "options"), [("int8", dict(symmetric=False)), ("int8", {}),
                                                 ("int4", dict(group_size=32))])
def test_float16_extremes_stay_finite(scheme, options):
    """A float16 weight at +-65504: the dequantized code may round a step past the largest float16 (65760 in
    float32); it is clamped to the finite range rather than cast to inf, and stays within half a step."""
    w = torch.tensor([[-65504.0, 65504.0, 1.0, -3.0] * 8], dtype=torch.float16)
    back = dequantize(quantize(w, scheme, **options))
    assert back.dtype == torch.float16 and torch.isfinite(back).all()
    step = 131008 / (255 if scheme == "int8" else 15)
    assert (back.float() - w.float()).abs().max() <= step / 2 + 1


@pytest.mark.parametrize(("scheme", "options"), [("int8", {"symmetric": False}),
                                                  ("int8", {"symmetric": False, "granularity": "tensor"}),
                                                  ("int4", {"group_size": 4})])
def test_a_range_beyond_float32_gives_a_finite_scale(scheme, options):
    """Finite float32 weights of both signs beyond ~1.7e38: max - min overflowed to an inf scale, so asymmetric
    int8 dequantized the whole group to NaN and int4 was refused with "scales: expected finite" (about its own
    scales); the scale is now recomputed in float64 there and every element stays within half a step."""
    w = torch.tensor([[3e38, -3e38, 1.0, 0.0]])
    qt = quantize(w, scheme, **options)
    assert torch.isfinite(qt.scales).all()
    step = qt.scales.max().double()
    assert ((dequantize(qt).double() - w.double()).abs() <= step / 2 * (1 + 1e-4)).all()
    assert torch.equal(rtn_quantize(w, group_size=4), dequantize(quantize(w, "int4", group_size=4)))
