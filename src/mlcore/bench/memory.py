"""Peak tensor memory of one call.

CUDA: the caching allocator's own peak counter (``max_memory_allocated``), reset before the call,
minus what was allocated before it: exactly the bytes of live tensors at the worst moment.

CPU: torch has no peak counter for its CPU allocator, and process RSS is blurred by glibc's
arenas (freed pages are reused without showing up). We therefore replay the allocation record of
the PyTorch profiler (``profile_memory=True``): each operator's own net allocation and each free,
in time order; the running sum's maximum is the peak. This is honest at operator granularity: a
temporary buffer that one aten op allocates and frees internally is not seen.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import torch
from torch.profiler import ProfilerActivity, profile

from .timing import check_device


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence file descriptor 2 for a moment: the profiler's C++ side prints start/stop lines there."""
    try:
        saved = os.dup(2)
    except OSError:  # no real stderr (embedded interpreters): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peak(fn: Callable[[], object]) -> int:
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_native_stderr():
        prof.start()
    try:
        result = fn()
        del result  # outputs count while alive; freeing them afterwards does not lower the peak
    finally:
        with _quiet_native_stderr():
            prof.stop()
    deltas: list[tuple[float, int]] = []
    for event in prof.events():
        if event.name == "[memory]":  # a free (or allocation) outside any operator
            deltas.append((event.time_range.start, event.cpu_memory_usage))
        elif event.self_cpu_memory_usage:
            deltas.append((event.time_range.start, event.self_cpu_memory_usage))
    deltas.sort(key=lambda d: d[0])
    running = peak = 0
    for _, delta in deltas:
        running += delta
        peak = max(peak, running)
    return int(peak)


def peak_memory(fn: Callable[[], object], *, device: torch.device | str = "cpu") -> int:
    """Bytes of tensor memory at the peak of ``fn()`` above what was live before it."""
    device = check_device(device)
    if not callable(fn):  # else the profiler was started first and the error came from inside it
        raise TypeError(f"fn must be a callable taking no arguments, got {type(fn).__name__}")
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            result = fn()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - before
            del result
        return int(peak)
    return _cpu_peak(fn)
