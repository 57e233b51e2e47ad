"""Roofline: the probed ceilings, and matmul throughput across sizes against the matmul peak.

Square ``n x n`` products do ``2 n^3`` FLOPs on ``3 n^2`` elements, so their arithmetic intensity
grows with ``n``: small products are bandwidth- or overhead-bound, large ones approach the peak.
There is no ecosystem twin here: the machine is the reference, and ``frac_peak_flops`` says how
close ``torch.matmul`` comes to the peak measured by the probe.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from mlcore.bench import Context, Plot, Result, Table, roofline, time_fn

DESCRIPTION = "probed ceilings; torch.matmul throughput across sizes against the matmul peak"
PLOTS = [
    Plot(name="matmul_gflops_vs_n", x="n", y="gflops", series="dtype", logx=True,
         title="matmul throughput vs size", ylabel="GFLOP/s"),
]
TABLES = [
    Table("Probed ceilings", where={"kind": "ceiling"}),
    Table("torch.matmul against the matmul peak", where={"name": "torch.matmul"},
          columns=("gflops", "frac_peak_flops")),
]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _ceilings(ctx: Context) -> Iterator[Result]:
    probe = ctx.probe
    figures = [("read bandwidth", probe.read_gbs, "GB/s", None), ("copy bandwidth", probe.copy_gbs, "GB/s", None)]
    figures += [(f"GEMV bandwidth {k}", v, "GB/s", k) for k, v in probe.gemv_gbs.items()]
    figures += [(f"matmul peak {k}", v / 1e9, "GFLOP/s", k) for k, v in probe.matmul_flops.items()]
    for name, value, unit, dtype in figures:
        yield Result("roofline", name, {"kind": "ceiling"}, str(ctx.device), dtype, value, 0.0, unit)


def run(ctx: Context) -> Iterator[Result]:
    yield from _ceilings(ctx)
    sizes = [64, 128, 256, 512, 1024] if ctx.quick else [64, 128, 256, 512, 1024, 2048, 4096]
    if ctx.device.type == "cuda":
        sizes = [256, 512, 1024, 2048, 4096, 8192]
    dtypes = list(ctx.probe.matmul_flops)
    for dtype_name in dtypes:
        dtype = _DTYPES[dtype_name]
        for n in sizes:
            a = torch.randn(n, n, device=ctx.device).to(dtype)
            b = torch.randn(n, n, device=ctx.device).to(dtype)
            t = time_fn(lambda a=a, b=b: a @ b, device=ctx.device, min_run_time=0.05 if ctx.quick else 0.3)
            flops = 2.0 * n**3
            rl = roofline(seconds=t.median, flops=flops, bytes_moved=3 * n * n * dtype.itemsize,
                          probe=ctx.probe, dtype=dtype_name)
            yield Result.from_timing("roofline", "torch.matmul", {"n": n}, device=ctx.device, dtype=dtype_name,
                                     timing=t, extra={k: round(v, 4) for k, v in rl.items()})
