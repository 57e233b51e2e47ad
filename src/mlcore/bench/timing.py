"""Wall-clock timing that a reader can trust.

CPU: ``torch.utils.benchmark.Timer`` (it handles warm-up of its own, picks the number of loops
per measurement and reports median and interquartile range). We pass the current thread count
explicitly: the Timer defaults to one thread, which would silently under-state a multi-core CPU.

CUDA: CUDA events around each call with a synchronize, after explicit warm-up, since host timers
only measure the kernel *launch* unless the stream is synchronized.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.utils.benchmark as tbench

MIN_RUNS = 5  # measurements behind every median and IQR, on CPU and CUDA alike


@dataclass(frozen=True)
class Timing:
    """Median and interquartile range of one call, in seconds, over ``runs`` measurements."""

    median: float
    iqr: float
    runs: int


def _quantile(sorted_xs: list[float], q: float) -> float:
    if len(sorted_xs) == 1:
        return sorted_xs[0]
    pos = q * (len(sorted_xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def _time_cuda(fn: Callable[[], object], warmup: int, min_run_time: float, device: torch.device) -> Timing:
    with torch.cuda.device(device):
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        times: list[float] = []
        total = 0.0
        while total < min_run_time or len(times) < MIN_RUNS:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            elapsed = start.elapsed_time(end) / 1e3  # ms -> s
            times.append(elapsed)
            total += elapsed
            if len(times) >= 1000:
                break
    times.sort()
    return Timing(statistics.median(times), _quantile(times, 0.75) - _quantile(times, 0.25), len(times))


def check_device(device: torch.device | str) -> torch.device:
    """``device`` as a torch.device that the harness can measure on: CPU, or CUDA when present.

    Anything else would be timed with the host clock without a synchronize (meta, mps), and CUDA without a
    GPU fails deep inside torch.cuda with an unrelated TypeError.
    """
    if not isinstance(device, (str, torch.device)):  # torch.device(0) means a GPU; None failed deep in torch
        raise TypeError(f"device must be a str or torch.device ('cpu', 'cuda'), got {device!r}")
    try:
        device = torch.device(device)
    except RuntimeError as exc:  # "cpux": torch's message lists every backend name it knows
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}") from exc
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {str(device)!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for, but torch sees no CUDA GPU on this machine")
    return device


def time_fn(
    fn: Callable[[], object],
    *,
    device: torch.device | str = "cpu",
    warmup: int = 2,
    min_run_time: float = 0.2,
) -> Timing:
    """Time ``fn()`` on ``device``; returns the median and IQR of one call in seconds.

    ``warmup`` calls run first (lazy initialisation, caches, autotuning); measurements then
    continue until ``min_run_time`` seconds have been spent.
    """
    device = check_device(device)
    if not callable(fn):
        raise TypeError(f"fn must be a callable taking no arguments, got {type(fn).__name__}")
    if isinstance(warmup, bool) or not isinstance(warmup, int):  # 2.5 / None failed inside range() or "<"
        raise TypeError(f"warmup must be an int (calls before timing), got {warmup!r}")
    if isinstance(min_run_time, bool) or not isinstance(min_run_time, (int, float)):
        raise TypeError(f"min_run_time must be a number of seconds, got {min_run_time!r}")
    # NaN passes "<= 0" and NaN / inf never satisfy the "until min_run_time" loop: it would never return
    if warmup < 0 or not (math.isfinite(min_run_time) and min_run_time > 0):
        raise ValueError(f"warmup must be >= 0 and min_run_time finite and > 0, got {warmup} and {min_run_time}")
    if device.type == "cuda":
        return _time_cuda(fn, warmup, min_run_time, device)
    for _ in range(warmup):
        fn()
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_run_time)
    times = list(m.times)  # seconds per call, one entry per block of m.number_per_run calls
    # The Timer sizes its blocks from a noisy overhead estimate: on a loaded machine one block can
    # fill min_run_time alone, and an IQR over one block says nothing. Top up to MIN_RUNS blocks.
    while len(times) < MIN_RUNS:
        times.append(timer.timeit(m.number_per_run).median)
    times.sort()
    return Timing(statistics.median(times), _quantile(times, 0.75) - _quantile(times, 0.25), len(times))
