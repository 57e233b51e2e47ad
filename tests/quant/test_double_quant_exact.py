"""Double quantization identical to bitsandbytes 0.50 on CPU, every field of its QuantState.

bitsandbytes' native CPU ``quantize_blockwise`` (the nested level: ``absmax - mean`` in blocks of 256 with the
signed dynamic map) does not round to the nearest code. It scales by ``x * (1 / absmax)`` in float32, snaps the
value to one of 65536 evenly spaced points of [-1, 1] with a fused multiply-add, and reads the code of that
point from a table. mlcore's ``table_code`` does the same; these tests compare it with bitsandbytes itself on
inputs chosen to land on the table's edges (code midpoints, grid points and the half-way values between them,
values finer than the grid, subnormal block maxima whose reciprocal overflows, blocks of zeros), then fuzz the
whole ``quantize_4bit`` with double quantization.
"""

from __future__ import annotations

import pytest
import torch

from mlcore.quant import dequantize, from_bitsandbytes, quantize, signed_dynamic_map
from mlcore.quant.codebooks import TABLE_SIZE, code_lookup_table, nearest_code, table_code
from mlcore.quant.nf4 import quantize_blockwise_dynamic

from ._bnb import bnb_cpu_dequant_is_exact, bnb_dequantize, bnb_functional, bnb_quantize


def _bnb_blockwise(x: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    codes, state = bnb_functional.quantize_blockwise(x, blocksize=blocksize)  # the default code: the dynamic map
    return codes, state.absmax


def _grid(i: torch.Tensor) -> torch.Tensor:
    """The table's points, float32 as bitsandbytes computes them (2 i / 65535 - 1)."""
    i = i.float()
    return (i + i) / (TABLE_SIZE - 1) - 1.0


def _inputs(kind: str, n: int, g: torch.Generator) -> torch.Tensor:
    """(n,) float32 values for the nested level; blocks of 256 get a maximum of 1 where the kind is about [-1, 1]."""
    dyn = signed_dynamic_map()
    if kind == "normal":
        return torch.randn(n, generator=g)
    if kind == "magnitudes":  # each value of its own binade: block maxima far from the values
        return torch.randn(n, generator=g) * torch.exp2(torch.randint(-60, 60, (n,), generator=g).float())
    if kind == "subnormal":  # block maxima below 2.9e-39: 1 / absmax is inf, zeros become 0 * inf = NaN
        x = torch.randn(n, generator=g) * 1e-40
        x[::3] = 0.0
        return x
    if kind == "zero-blocks":
        x = torch.randn(n, generator=g)
        x[: (n // 512) * 256] = 0.0
        return x
    if kind == "midpoints":  # exactly between two codes, and one float32 step either side, times an odd absmax
        mids = (dyn[:-1] + dyn[1:]) / 2
        x = mids[torch.randint(0, 255, (n,), generator=g)]
        x = torch.where(torch.rand(n, generator=g) < 0.5, x, torch.nextafter(x, torch.randn(n, generator=g)))
        a = 0.37
    elif kind == "grid":  # on the grid, half-way between grid points, and one float32 step from half-way
        i = torch.randint(0, TABLE_SIZE - 1, (n,), generator=g)
        half = (_grid(i) + _grid(i + 1)) / 2
        x = torch.where(torch.rand(n, generator=g) < 0.3, _grid(i), half)
        x = torch.where(torch.rand(n, generator=g) < 0.3, torch.nextafter(x, torch.randn(n, generator=g)), x)
        a = 1.0
    elif kind == "near-zero":  # finer than the grid: the map's smallest codes (1e-6 and up) are out of reach
        x = (torch.rand(n, generator=g) * 2 - 1) * 4e-5
        a = 1.0
    elif kind == "near-one":  # float32 steps next to -1 and 1
        j = torch.randint(0, 4096, (n,), generator=g).float() * 2.0**-24
        x = torch.where(torch.rand(n, generator=g) < 0.5, -1 + j, 1 - j)
        a = 1.0
    else:
        raise ValueError(kind)
    x = x * a
    x[::256] = a  # every block's absmax
    return x


DTYPES = (torch.float32, torch.float16, torch.bfloat16)
KINDS = ("normal", "magnitudes", "subnormal", "zero-blocks", "midpoints", "grid", "near-zero", "near-one")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("blocksize", [256, 64, 4096])
def test_nested_level_equals_bitsandbytes_quantize_blockwise(kind, blocksize):
    g = torch.Generator().manual_seed(KINDS.index(kind) * 7919 + blocksize)
    for n in (1, 255, 257, 20_000):
        x = _inputs(kind, n, g).contiguous()
        codes, absmax = quantize_blockwise_dynamic(x, blocksize)
        ref_codes, ref_absmax = _bnb_blockwise(x, blocksize)
        assert torch.equal(absmax, ref_absmax), (kind, n)
        assert torch.equal(codes, ref_codes), (kind, n, int((codes != ref_codes).sum()))


def test_every_grid_point_and_half_point_equals_bitsandbytes():
    """All 65536 points of the table and the 65535 float32 values half-way between neighbours, in one block of
    maximum 1 (so ``x * (1 / absmax)`` is ``x``): the table and the fused snapping, exhaustively."""
    i = torch.arange(TABLE_SIZE)
    points = _grid(i)
    halves = (points[:-1] + points[1:]) / 2
    x = torch.cat([points, halves, torch.nextafter(halves, torch.ones(1)), torch.nextafter(halves, -torch.ones(1))])
    ref, _ = _bnb_blockwise(x, x.numel())
    assert torch.equal(table_code(x, signed_dynamic_map()).to(torch.uint8), ref)
    assert torch.equal(code_lookup_table(signed_dynamic_map()).to(torch.uint8), ref[:TABLE_SIZE])


def test_bitsandbytes_cpu_rounding_is_not_the_nearest_code():
    """Why the old nearest-code rounding differed: 1e-6 has its own code in the dynamic map, but the grid's
    nearest point is 1.5e-5 (index 32768), whose nearest code is larger; and 0 * (1 / 1e-40) = NaN takes code 0
    (-0.993), not the code of 0."""
    dyn = signed_dynamic_map()
    x = torch.tensor([1.0, 1e-6, -1e-6, 0.0])
    ref, _ = _bnb_blockwise(x, 4)
    assert torch.equal(table_code(x, dyn).to(torch.uint8), ref)
    assert not torch.equal(nearest_code(x, dyn).to(torch.uint8), ref)
    tiny = torch.tensor([1e-40, 0.0, -1e-40, 0.0])
    codes, absmax = quantize_blockwise_dynamic(tiny, 4)
    ref, ref_absmax = _bnb_blockwise(tiny, 4)
    assert torch.equal(codes, ref) and torch.equal(absmax, ref_absmax)
    assert codes.tolist() == [255, 0, 0, 0] and dyn[0] < -0.99


def _weight(kind: str, n: int, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    w = torch.randn(n, generator=g)
    if kind == "heavy":  # a ratio of normals: block maxima spread over decades
        w = w / (torch.randn(n, generator=g).abs() + 1e-3) * 1e-3
    elif kind == "zero-blocks":
        w = w * (torch.rand(n // 16 + 1, generator=g) < 0.6).repeat_interleave(16)[:n]
    elif kind == "constant-blocks":  # many equal block maxima: the centred scales sit on few values
        w = (torch.randint(-3, 4, (n // 64 + 1,), generator=g) * 0.1).repeat_interleave(64)[:n]
    elif kind == "magnitudes":  # float16 keeps to +-2**12, where its dequantized values stay finite
        e = 12 if dtype == torch.float16 else 30
        w = w * torch.exp2(torch.randint(-e, e, (n // 32 + 1,), generator=g).float()).repeat_interleave(32)[:n]
    elif kind == "tiny":  # subnormal in float32
        w = w * 1e-39
    return w.to(dtype)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16", "bf16"])
def test_quantize_4bit_double_quant_fuzz(quant_type, dtype):
    """Random weights of many sizes (one element to thousands of blocks, numel rarely a multiple of the block)
    and block sizes: packed bytes, 8-bit scale codes, second-level absmax, offset and dequantized values."""
    g = torch.Generator().manual_seed(10 * ("nf4", "fp4").index(quant_type) + DTYPES.index(dtype))
    kinds = ("normal", "heavy", "zero-blocks", "constant-blocks", "magnitudes", "tiny")
    for case in range(120):
        kind = kinds[case % len(kinds)]
        blocksize = (32, 64, 128, 256, 512, 1024, 2048, 4096)[int(torch.randint(0, 8, (1,), generator=g))]
        n = int(torch.randint(1, (300, 5000, 70_000)[case % 3], (1,), generator=g))
        w = _weight(kind, n, dtype, g)
        if case % 4 == 0 and n >= 64:
            w = w[: n - n % 64].reshape(-1, 64)  # rows that blocks cross
        packed, state = bnb_quantize(w, quant_type, blocksize, double_quant=True)
        qt = quantize(w, quant_type, blocksize=blocksize, double_quant=True)
        where = (kind, blocksize, tuple(w.shape))
        assert torch.equal(qt.data, packed.reshape(-1)), where
        assert torch.equal(qt.scales, state.absmax), (where, int((qt.scales != state.absmax).sum()))
        assert torch.equal(qt.nested.absmax, state.state2.absmax), where
        assert torch.equal(qt.nested.offset, state.offset), where
        ours = dequantize(qt)
        assert torch.equal(ours, dequantize(from_bitsandbytes(packed, state))), where
        # bitsandbytes' own dequantizer, where its kernel is right; its AVX512-BF16 conversion flushes subnormal
        # bfloat16 outputs to zero (hardware), so the subnormal kind is compared in float32 / float16 only
        if bnb_cpu_dequant_is_exact(tuple(w.shape), blocksize) and not (kind == "tiny" and dtype == torch.bfloat16):
            assert torch.equal(bnb_dequantize(packed, state).reshape(-1), ours.reshape(-1)), where
