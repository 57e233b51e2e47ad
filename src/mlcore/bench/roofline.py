"""Roofline: achieved throughput as a fraction of the probed ceilings (Williams et al. 2009).

A kernel that does ``flops`` operations and moves ``bytes_moved`` bytes in ``seconds`` reaches
``flops / seconds`` FLOP/s and ``bytes_moved / seconds`` B/s; its arithmetic intensity
``flops / bytes_moved`` tells which ceiling binds: ``min(peak_flops, intensity * peak_bw)``.
"""

from __future__ import annotations

import math

import torch

from .probe import Probe


def roofline(
    *,
    seconds: float,
    probe: Probe,
    flops: float | None = None,
    bytes_moved: float | None = None,
    dtype: str | torch.dtype = "float32",
) -> dict[str, float]:
    """Achieved GFLOP/s and GB/s with their fractions of this machine's measured ceilings.

    Bandwidth is compared with the higher of the read-bandwidth ceiling and the GEMV ceiling of ``dtype``
    (when one was probed: streaming weights through a GEMV can beat ``x.sum()``, and a ceiling must not be
    lower than a rate the machine reaches): ``frac_peak_bw = bytes_moved / seconds / max(read, gemv[dtype])``.
    ``dtype`` is a name ("bfloat16") or a torch.dtype; FLOP/s need a matmul ceiling probed for it
    (``frac_peak_flops = flops / seconds / matmul[dtype]``). ``seconds`` must be finite and > 0, ``flops`` and
    ``bytes_moved`` finite and >= 0.
    """
    for name, value in (("seconds", seconds), ("flops", flops), ("bytes_moved", bytes_moved)):
        if value is None and name != "seconds":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {value!r}")
        # NaN would turn every figure into NaN, and a negative count a negative bandwidth, silently
        if not (math.isfinite(value) and (value > 0 if name == "seconds" else value >= 0)):
            raise ValueError(f"{name} must be finite and {'> 0' if name == 'seconds' else '>= 0'}, got {value}")
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    if not isinstance(dtype, str) or not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ValueError(f"dtype must be a torch dtype or its name, got {dtype!r}; probed: "
                         f"{', '.join(probe.matmul_flops) or 'none'}")
    out: dict[str, float] = {}
    if flops is not None:
        # another dtype's ceiling (bfloat16's is several times float32's) would make the fraction meaningless
        if dtype not in probe.matmul_flops:
            raise ValueError(f"no matmul ceiling was probed for dtype {dtype!r}; probed: "
                             f"{', '.join(probe.matmul_flops) or 'none'}")
        peak = probe.matmul_flops[dtype]
        out["gflops"] = flops / seconds / 1e9
        out["frac_peak_flops"] = flops / seconds / peak if peak else float("nan")
    if bytes_moved is not None:
        peak_bw = max(probe.read_gbs, probe.gemv_gbs.get(dtype, 0.0))
        out["gbs"] = bytes_moved / seconds / 1e9
        out["frac_peak_bw"] = out["gbs"] / peak_bw if peak_bw else float("nan")
    if flops is not None and bytes_moved:
        out["intensity"] = flops / bytes_moved
    return out
