"""NF4 / FP4 against bitsandbytes 0.50 on CPU: packed bytes, absmax and dequantized values.

With or without double quantization everything is identical: the 4-bit bytes, the 8-bit scale codes (rounded
through bitsandbytes' 65536-point grid, not to the nearest code: ``test_double_quant_exact.py``), the
second-level absmax and the offset, and the dequantized values wherever bitsandbytes' CPU kernel is right.
"""

from __future__ import annotations

import copy

import pytest
import torch

from mlcore.quant import dequantize, from_bitsandbytes, quantize

from ._bnb import bnb_cpu_dequant_is_exact, bnb_dequantize, bnb_quantize

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
# rows within a block / blocks crossing rows and longer than a row / odd element count in one dimension
SHAPES = ((4, 4096), (24, 96), (4099,))


def _weight(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.05
    w.view(-1)[:: 97] *= 20  # a few outliers, so blocks have different absmax
    return w.to(dtype)


def _check_dequantized(ours: torch.Tensor, packed: torch.Tensor, state, shape, blocksize) -> None:
    """Our dequantized values equal bitsandbytes' wherever bitsandbytes' CPU kernel is right."""
    if bnb_cpu_dequant_is_exact(shape, blocksize):
        ref = bnb_dequantize(packed, state)  # (1, n) for a 1-D tensor in bitsandbytes 0.50: compare values
        assert ref.dtype == ours.dtype and torch.equal(ref.reshape(-1), ours.reshape(-1))
        return
    # bitsandbytes' CPU kernel is wrong when a block is longer than a row or crosses rows (see _bnb.py): only
    # the bytes and absmax (checked by the caller) can be compared with it there. When whole blocks tile the tensor, the same bytes viewed
    # as rows of exactly one block are a shape its kernel handles, and give the reference values.
    n = ours.numel()
    if n % blocksize == 0:
        rows = copy.copy(state)
        rows.shape = torch.Size((n // blocksize, blocksize))
        assert torch.equal(bnb_dequantize(packed, rows).reshape(-1), ours.reshape(-1))


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("blocksize", BLOCKSIZES)
def test_without_double_quant_identical(quant_type, dtype, blocksize):
    for i, shape in enumerate(SHAPES):
        w = _weight(shape, dtype, seed=blocksize + i)
        packed, state = bnb_quantize(w, quant_type, blocksize, double_quant=False)
        qt = quantize(w, quant_type, blocksize=blocksize, double_quant=False)
        assert torch.equal(qt.data, packed.reshape(-1)), (shape, "packed bytes")
        assert torch.equal(qt.scales, state.absmax), (shape, "absmax")
        ours = dequantize(qt)
        assert ours.shape == w.shape and ours.dtype == dtype
        _check_dequantized(ours, packed, state, shape, blocksize)
        # and our dequantizer on bitsandbytes' own state gives the same tensor
        assert torch.equal(dequantize(from_bitsandbytes(packed, state)), ours)


def test_first_element_in_high_nibble():
    w = torch.zeros(64)
    w[0], w[1] = 1.0, -1.0  # NF4 codes 15 and 0
    qt = quantize(w, "nf4", double_quant=False)
    assert qt.data[0].item() == 0xF0
    assert bnb_quantize(w, "nf4", 64, False)[0].reshape(-1)[0].item() == 0xF0


def test_with_double_quant():
    for quant_type in ("nf4", "fp4"):
        for dtype in DTYPES:
            for blocksize in BLOCKSIZES:
                for i, shape in enumerate(((8, 4096), (4099,))):
                    w = _weight(shape, dtype, seed=10_000 + blocksize + i)
                    packed, state = bnb_quantize(w, quant_type, blocksize, double_quant=True)
                    qt = quantize(w, quant_type, blocksize=blocksize, double_quant=True)
                    where = (quant_type, dtype, blocksize, shape)
                    assert torch.equal(qt.data, packed.reshape(-1)), where
                    assert torch.equal(qt.scales, state.absmax), where  # the 8-bit scale codes
                    assert torch.equal(qt.nested.absmax, state.state2.absmax), where
                    assert torch.equal(qt.nested.offset, state.offset), where
                    assert qt.nested.blocksize == state.state2.blocksize == 256
                    ours = dequantize(qt)
                    _check_dequantized(ours, packed, state, shape, blocksize)
                    # and our dequantizer on bitsandbytes' own state gives the same tensor
                    assert torch.equal(dequantize(from_bitsandbytes(packed, state)), ours), where


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_bits_per_parameter_with_double_quant(quant_type):
    qt = quantize(torch.randn(1024, 1024), quant_type)  # blocksize 64, double quant: the defaults
    n = 1024 * 1024
    expected = (n // 2 + n // 64 + 4 * (n // 64 // 256) + 4) * 8 / n  # codes, 8-bit scales, fp32 absmax2, offset
    assert qt.bits_per_parameter == pytest.approx(expected)
    assert qt.bits_per_parameter <= 4.13
    no_dq = quantize(torch.randn(1024, 1024), quant_type, double_quant=False)
    assert no_dq.bits_per_parameter == pytest.approx(4.5)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_shorter_last_block_scaled_as_bitsandbytes(quant_type):
    """bitsandbytes scales a shorter last block by x / absmax (full blocks by x * (1 / absmax)), and stores
    max(absmax, 1e-38) for it: the 1-ulp difference moves values that sit on a boundary between two codes
    (fp16 fp4 seed 887: one byte differed when every block was scaled by the reciprocal)."""
    for seed in (887, *range(40)):
        w = torch.randn(64 + 8, generator=torch.Generator().manual_seed(seed)).to(torch.float16)
        packed, state = bnb_quantize(w, quant_type, 64, False)
        qt = quantize(w, quant_type, blocksize=64, double_quant=False)
        assert torch.equal(qt.data, packed.reshape(-1)), seed
        assert torch.equal(qt.scales, state.absmax)
    tail_zero = torch.cat([torch.linspace(-1, 1, 64), torch.zeros(10)])
    packed, state = bnb_quantize(tail_zero, quant_type, 64, False)
    qt = quantize(tail_zero, quant_type, blocksize=64, double_quant=False)
    assert torch.equal(qt.scales, state.absmax) and qt.scales[-1] > 0  # the clamped 1e-38
    assert torch.equal(qt.data, packed.reshape(-1))


@pytest.mark.parametrize(("w", "blocksize"), [
    (torch.randn(64), 64),  # one first-level block: the nested block (absmax - mean) is all zero
    (torch.randn(3, 5, 7), 256),
    (torch.zeros(64 * 300), 64),  # a full and a shorter nested block of zeros
    (torch.ones(64 * 257), 64),
], ids=["one-block", "odd-shape", "zeros", "constant"])
def test_double_quant_constant_nested_block_stored_as_bitsandbytes(w, blocksize):
    """bitsandbytes' quantize_blockwise (the nested level) stores absmax 0 and codes 0 for a block of zeros,
    not the 1e-38 clamp of the 4-bit level; the dequantized values stay exact."""
    packed, state = bnb_quantize(w, "nf4", blocksize, double_quant=True)
    qt = quantize(w, "nf4", blocksize=blocksize, double_quant=True)
    assert torch.equal(qt.nested.absmax, state.state2.absmax)
    assert torch.equal(qt.scales, state.absmax)
    assert torch.equal(qt.nested.offset, state.offset)
    assert torch.equal(dequantize(qt), dequantize(from_bitsandbytes(packed, state)))
    assert torch.isfinite(dequantize(qt)).all()


def test_repacked_for_the_cpu_kernel_is_refused_clearly():
    """After one forward of an eval-mode Linear4bit on a CPU with AVX512-BF16, bitsandbytes repacks the weight
    for its own kernel; from_bitsandbytes says so instead of complaining about a scales dtype."""
    bnb = pytest.importorskip("bitsandbytes")
    lin = torch.nn.Linear(64, 32, bias=False)
    l4 = bnb.nn.Linear4bit(64, 32, bias=False, quant_type="nf4", compute_dtype=torch.float32)
    l4.load_state_dict(lin.state_dict())
    l4 = l4.to("cpu").eval()
    with torch.no_grad():
        l4(torch.randn(1, 64))
    state = l4.weight.quant_state
    if not getattr(state, "packing_format_for_cpu", False):  # no AVX512-BF16 here: mark a copy as repacked
        state = copy.copy(state)
        state.packing_format_for_cpu = True
    with pytest.raises(ValueError, match="quant_state: repacked for bitsandbytes' AVX512-BF16 CPU kernel"):
        from_bitsandbytes(l4.weight.data, state)


@pytest.mark.parametrize(("w", "blocksize"), [
    (torch.zeros(4002, dtype=torch.float16), 512),  # all zeros, shorter last block stored as 1e-38
    (torch.zeros(96, dtype=torch.bfloat16), 64),  # a full block of zeros (0) and a short one (1e-38)
    (torch.randn(662, generator=torch.Generator().manual_seed(25)) * 1e-39, 128),  # subnormal weights
], ids=["zeros", "zeros-two-blocks", "subnormal"])
def test_double_quant_nested_level_has_no_floor(w, blocksize):
    """bitsandbytes' 8-bit nested level stores each block's true absmax, even below 1e-38 (a tensor of zeros
    whose shorter last 4-bit block holds the 1e-38 floor): ours stored 1e-38 there and chose codes with it."""
    for quant_type in ("nf4", "fp4"):
        packed, state = bnb_quantize(w, quant_type, blocksize, double_quant=True)
        qt = quantize(w, quant_type, blocksize=blocksize, double_quant=True)
        assert torch.equal(qt.nested.absmax, state.state2.absmax)
        assert torch.equal(qt.nested.offset, state.offset)
        assert torch.equal(qt.data, packed.reshape(-1))
        assert torch.equal(qt.scales, state.absmax)  # subnormal scales: codes of 1 / absmax = inf, as bitsandbytes
        assert torch.equal(dequantize(qt), dequantize(from_bitsandbytes(packed, state)))


def test_double_quant_offset_does_not_overflow():
    """Block absmax values near float32's limit: their float32 sum overflows, and bitsandbytes stores an
    infinite offset (every value dequantizes to inf / NaN). Ours takes that mean in float64: finite and close."""
    w = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 1e37
    for quant_type in ("nf4", "fp4"):
        qt = quantize(w, quant_type, double_quant=True)
        assert torch.isfinite(qt.nested.offset) and torch.isfinite(qt.nested.absmax).all()
        back = dequantize(qt)
        plain = dequantize(quantize(w, quant_type, double_quant=False))
        assert torch.isfinite(back).all()
        assert (back - plain).abs().max() <= 0.02 * w.abs().max()  # only the 8-bit scale rounding differs
        packed, _ = bnb_quantize(w, quant_type, 64, double_quant=True)
        assert torch.equal(qt.data, packed.reshape(-1))


def test_float16_double_quant_stays_finite():
    """A float16 weight near 65504: a double-quantized block scale may land above it, and bitsandbytes'
    dequantization returns inf there; ours clamps the scale to 65504 and equals it everywhere else."""
    w = (torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 2e4).clamp(-65504, 65504).half()
    for quant_type in ("nf4", "fp4"):
        packed, state = bnb_quantize(w, quant_type, 64, double_quant=True)
        ours = dequantize(from_bitsandbytes(packed, state))
        ref = bnb_dequantize(packed, state).reshape(-1)
        assert ours.dtype == torch.float16 and torch.isfinite(ours).all()
        finite = torch.isfinite(ref)
        assert torch.equal(ours[finite], ref[finite])
        assert dequantize(quantize(w, quant_type)).isfinite().all()
