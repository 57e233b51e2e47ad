"""The row-dot GEMV (:mod:`mlcore._row_dot`) against ``torch.nn.functional.linear``.

Eager values check the formula; compiled, the generated code is read (``run_and_get_code``) to check that a
single CPU row becomes inductor's own reduction (no library matmul call) and that more rows keep the library
matmul.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._inductor.utils import run_and_get_code

from mlcore._row_dot import (
    RowDotLinear,
    row_dot_linear,
    tile_rows,
    tiled_row_dot_linear,
    tiled_weight,
    use_row_dots,
)

_LIBRARY_MATMULS = ("extern_kernels.mm", "extern_kernels.addmm", "aten.mm", "aten.addmm", "mkl_linear",
                    "_linear_pointwise")


def _weights(dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(24, 40, generator=gen).to(dtype), torch.randn(8, 40, generator=gen).to(dtype)
    b1 = torch.randn(24, generator=gen).to(dtype)
    return gen, w1, w2, b1


@pytest.mark.parametrize("shape", [(40,), (1, 40), (1, 1, 40), (3, 2, 40)])
@pytest.mark.parametrize("bias", [False, True])
def test_row_dot_linear_equals_f_linear_in_float32(shape, bias):
    gen, w1, _, b1 = _weights(torch.float32)
    x = torch.randn(*shape, generator=gen)
    b = b1 if bias else None
    torch.testing.assert_close(row_dot_linear(x, w1, b), F.linear(x, w1, b), atol=1e-5, rtol=1e-5)


def test_row_dot_linear_in_bfloat16_is_the_float32_sum_rounded_once():
    gen, w1, _, b1 = _weights(torch.bfloat16)
    x = torch.randn(1, 1, 40, generator=gen).to(torch.bfloat16)
    out = row_dot_linear(x, w1, b1)
    assert out.dtype == torch.bfloat16
    exact = F.linear(x.double(), w1.double(), b1.double())  # products of bf16 values are exact in float64
    torch.testing.assert_close(out, exact.to(torch.bfloat16), atol=0, rtol=2**-7)  # one bf16 rounding


def test_use_row_dots_is_false_outside_a_trace():
    w = torch.randn(4, 8)
    assert not use_row_dots(torch.randn(1, 8), w)


def test_row_dot_linear_eager_is_per_layer_f_linear_concatenated():
    gen, w1, w2, b1 = _weights(torch.float32)
    x = torch.randn(2, 1, 40, generator=gen)
    layers = RowDotLinear([w1, w2], [b1, None])
    assert torch.equal(layers(x), torch.cat([F.linear(x, w1, b1), F.linear(x, w2)], -1))
    stacked = torch.cat([w1, w2])
    with_fallback = RowDotLinear([w1, w2], [b1, None], fallback=lambda t: F.linear(t, stacked))
    assert torch.equal(with_fallback(x), F.linear(x, stacked))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_single_row_is_a_generated_reduction_and_more_rows_keep_the_matmul(dtype):
    gen, w1, w2, b1 = _weights(dtype, seed=1)
    layers = RowDotLinear([w1, w2], [b1, None])

    def step(x):
        return layers(x)

    compiled = torch.compile(step, dynamic=False, fullgraph=True)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0.05, "rtol": 2**-7}
    for rows, library in ((1, False), (3, True)):
        x = torch.randn(rows, 1, 40, generator=gen).to(dtype)
        with torch.no_grad():
            out, code = run_and_get_code(compiled, x)
        reference = torch.cat([F.linear(x.float(), w1.float(), b1.float()), F.linear(x.float(), w2.float())], -1)
        torch.testing.assert_close(out.float(), reference, **tol)
        source = "\n".join(code)
        assert any(name in source for name in _LIBRARY_MATMULS) is library, (rows, source[-2000:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_codes_with_row_scales_equal_torchs_int8_kernel(dtype):
    """The reference is torch's own weight-only int8 GEMV, ``aten._weight_int8pack_mm`` (x @ codes^T * scales)."""
    gen = torch.Generator().manual_seed(2)
    codes = torch.randint(-127, 128, (48, 64), dtype=torch.int8, generator=gen)
    scales = (torch.rand(48, generator=gen) / 100).to(dtype)
    x = torch.randn(1, 64, generator=gen).to(dtype)
    reference = torch.ops.aten._weight_int8pack_mm(x, codes, scales)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-3, "rtol": 2**-7}
    torch.testing.assert_close(row_dot_linear(x, codes, scales=scales), reference, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tiled_weight_holds_each_tile_of_rows_column_by_column(dtype):
    r = tile_rows(dtype)
    assert r * dtype.itemsize == 64  # one cache line of a column per tile row
    w = torch.randn(3 * r, 40).to(dtype)
    tiles = tiled_weight(w)
    assert tiles.shape == (3, 40, r) and tiles.is_contiguous()
    for t in range(3):
        assert torch.equal(tiles[t], w[t * r:(t + 1) * r].t())
    assert tiled_weight(torch.randn(r + 1, 40).to(dtype)) is None  # rows not a multiple of a tile
    assert tiled_weight(torch.randn(r, 40, dtype=torch.float64)) is None
    assert tiled_weight(torch.randint(-5, 5, (r, 40), dtype=torch.int8)) is None


@pytest.mark.parametrize("shape", [(40,), (1, 40), (1, 1, 40)])
@pytest.mark.parametrize("bias", [False, True])
def test_tiled_row_dot_linear_equals_f_linear_in_float32(shape, bias):
    gen = torch.Generator().manual_seed(3)
    w, b = torch.randn(32, 40, generator=gen), torch.randn(32, generator=gen)
    x = torch.randn(*shape, generator=gen)
    out = tiled_row_dot_linear(x, tiled_weight(w), b if bias else None)
    torch.testing.assert_close(out, F.linear(x, w, b if bias else None), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_tiled_layers_equal_f_linear_and_keep_untiled_ones_as_row_dots(dtype):
    """RowDotLinear reads a layer's tiles where it has them and its weight where not; no library matmul."""
    gen = torch.Generator().manual_seed(4)
    r = tile_rows(dtype)
    w1, w2 = torch.randn(2 * r, 40, generator=gen).to(dtype), torch.randn(7, 40, generator=gen).to(dtype)
    b1 = torch.randn(2 * r, generator=gen).to(dtype)
    layers = RowDotLinear([w1, w2], [b1, None], tiles=[tiled_weight(w1), tiled_weight(w2)])
    compiled = torch.compile(lambda x: layers(x), dynamic=False, fullgraph=True)
    x = torch.randn(1, 1, 40, generator=gen).to(dtype)
    with torch.no_grad():
        out, code = run_and_get_code(compiled, x)
    reference = torch.cat([F.linear(x.float(), w1.float(), b1.float()), F.linear(x.float(), w2.float())], -1)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0.05, "rtol": 2**-7}
    torch.testing.assert_close(out.float(), reference, **tol)
    assert not any(name in "\n".join(code) for name in _LIBRARY_MATMULS)


def test_a_tiled_layers_input_is_computed_once_not_per_tile():
    """The input of tiled layers (here an RMSNorm) is realized into a buffer before the GEMV, so its rsqrt is
    not recomputed inside the GEMV's loop over tiles; the result is unchanged."""
    gen = torch.Generator().manual_seed(5)
    r = tile_rows(torch.float32)
    w = torch.randn(4 * r, 64, generator=gen)
    gain = torch.rand(64, generator=gen) + 0.5
    layers = RowDotLinear([w], [None], tiles=[tiled_weight(w)])

    def step(x):
        return layers(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * gain)

    x = torch.randn(1, 1, 64, generator=gen)
    with torch.no_grad():
        out, code = run_and_get_code(torch.compile(step, dynamic=False, fullgraph=True), x)
    torch.testing.assert_close(out, step(x), atol=1e-5, rtol=1e-5)
    source = "\n".join(code)
    # the norm's 1/sqrt is computed before the GEMV's reduction loop over the input (x2), not inside it
    assert source.count("std::sqrt") == 1 and source.index("std::sqrt") < source.index("for(int64_t x2")
