"""The probe's GEMV ceiling candidates and the decode benchmark's paired roofline fraction."""

from __future__ import annotations

import pytest
import torch

from benchmarks._decode_setup import paired_roofline
from mlcore.bench.probe import GemvKernel, fastest_gemv, gemv_kernels


@pytest.mark.slow
def test_gemv_candidates_include_the_compiled_row_dots_and_the_fastest_is_one_of_them():
    kernels = list(gemv_kernels(torch.device("cpu"), torch.float32, 1 << 20))
    names = [k.name for k in kernels]
    assert names == ["row-major", "column-major", "row-dots (compiled)", "tiled row-dots (compiled)"]
    with torch.no_grad():
        results = [k.fn() for k in kernels]  # one (1, rows) output each: every weight holds the same bytes
    assert {tuple(r.shape) for r in results} == {(1, 4096)} and {k.weight_bytes for k in kernels} == {4096 * 4096 * 4}
    gbs, kernel = fastest_gemv(torch.device("cpu"), torch.float32, 1 << 20, quick=True)
    assert kernel.name in names and kernel.weight_bytes == 4096 * 4096 * 4 and gbs > 0


def test_paired_roofline_divides_each_round_by_its_own_ceiling():
    # round 1: ceiling 10 GB/s, ideal 0.1 s, step 0.2 s -> 0.5; round 2: 20 GB/s, ideal 0.05 s, step 0.1 s -> 0.5
    frac, gbs = paired_roofline(1e9, [0.2, 0.1], [10.0, 20.0])
    assert frac == pytest.approx(0.5) and gbs == pytest.approx(15.0)
    frac, _ = paired_roofline(1e9, [0.2, 0.1, 0.1], [10.0, 10.0, 10.0])  # a drifting step is not averaged away
    assert frac == pytest.approx(1.0)


def test_ceiling_turns_kernel_timings_into_bandwidth():
    kernel = GemvKernel("any", lambda: None, 2_000_000_000)
    assert [kernel.gbs(t) for t in (0.1, 0.2)] == pytest.approx([20.0, 10.0])


def test_gemv_ceiling_takes_the_fastest_candidate_of_each_round():
    from benchmarks._decode_setup import GemvCeiling

    a, b = GemvKernel("a", lambda: None, 1_000_000_000), GemvKernel("b", lambda: None, 1_000_000_000)
    ceiling = GemvCeiling([a, b])
    assert set(ceiling.fns()) == {"ceiling|a", "ceiling|b"}
    per = {"ceiling|a": [0.1, 0.1, 0.1], "ceiling|b": [0.05, 0.2, 0.08]}  # b faster in rounds 1 and 3
    gbs, name = ceiling.per_round(per)
    assert gbs == pytest.approx([20.0, 10.0, 12.5]) and name == "b"


@pytest.mark.slow
@pytest.mark.parametrize("amx", [True, False])
def test_bfloat16_candidates_include_the_gemm_template_exactly_where_amx_exists(amx, monkeypatch):
    """The compiled bf16 step runs inductor's GEMM template where the CPU has AMX (inference/gemv_choice.py): the
    probe times the same kernel there (its values: the next test)."""
    import mlcore.bench.probe as probe

    monkeypatch.setattr(probe, "has_amx", lambda: amx)
    kernels = {k.name: k for k in gemv_kernels(torch.device("cpu"), torch.bfloat16, 1 << 20)}
    assert ("gemm template (compiled, frozen)" in kernels) is amx
    if amx:
        with torch.no_grad():
            template, plain = kernels["gemm template (compiled, frozen)"].fn(), kernels["row-major"].fn()
        assert template.shape == plain.shape == (1, 4096)


def test_the_template_candidate_computes_f_linear():
    from mlcore.bench.probe import _compiled_template

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(256, 128, generator=gen).to(torch.bfloat16)
    x = torch.randn(1, 128, generator=gen).to(torch.bfloat16)
    run = _compiled_template(x, w)
    assert run is not None
    with torch.no_grad():
        torch.testing.assert_close(run().float(), torch.nn.functional.linear(x, w).float(), atol=0.05, rtol=0.02)
