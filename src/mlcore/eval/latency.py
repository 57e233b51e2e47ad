"""Latency figures of a generation service: TTFT, TPOT, end-to-end percentiles and tokens/s under concurrency.

For one request submitted at ``s`` whose output tokens arrive at ``t_1 <= ... <= t_n``:

    TTFT (time to first token)   = t_1 - s                       (queueing + prefill)
    TPOT (time per output token) = (t_n - t_1) / (n - 1)         (decode speed; defined for n >= 2)
    end-to-end latency           = t_n - s

Over many requests a service reports percentiles (p50 / p95 / p99, NumPy's linear interpolation) and the
throughput ``sum n / (max t_n - min s)`` in output tokens per second, which grows with concurrency while each
request's TPOT worsens: the trade-off a serving configuration chooses on.

``latency_summary`` is a pure function of recorded timestamps (any server can feed it);
``measure_generate`` records them for ``mlcore.inference.generate`` with a streamer, ``concurrency``
requests at a time on threads.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

import numpy as np
import torch
from torch import nn

PERCENTILES = (50, 95, 99)


@dataclass
class RequestTiming:
    """One request: ``start`` (submitted) and ``token_times`` (arrival of each output token), in seconds on
    one clock (e.g. ``time.perf_counter()``)."""

    start: float
    token_times: list[float] = field(default_factory=list)

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.start

    @property
    def tpot(self) -> float | None:
        n = len(self.token_times)
        return (self.token_times[-1] - self.token_times[0]) / (n - 1) if n >= 2 else None

    @property
    def e2e(self) -> float:
        return self.token_times[-1] - self.start


def _check(records: Sequence[RequestTiming], percentiles: Sequence[float]) -> None:
    if isinstance(records, RequestTiming) or not isinstance(records, Sequence):
        raise ValueError(f"records must be a sequence of RequestTiming, got {type(records).__name__}")
    if len(records) == 0:
        raise ValueError("records must hold at least one RequestTiming, got none")
    if isinstance(percentiles, (str, bytes)) or not isinstance(percentiles, (Sequence, np.ndarray)) or any(
            isinstance(p, bool) or not isinstance(p, Real) or not 0 <= p <= 100 for p in percentiles):
        raise ValueError(f"percentiles must be a sequence of numbers in [0, 100], got {percentiles!r}")
    for i, r in enumerate(records):
        if not isinstance(r, RequestTiming):
            raise ValueError(f"records[{i}] must be a RequestTiming, got {type(r).__name__}")
        if isinstance(r.start, bool) or not isinstance(r.start, Real) or isinstance(r.token_times, (str, bytes)):
            raise ValueError(f"records[{i}] must hold a number start and a list of token_times, got start="
                             f"{r.start!r}, token_times of type {type(r.token_times).__name__}")
        try:
            times = np.asarray(r.token_times, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"records[{i}].token_times must be numbers (seconds), got {err}") from None
        if times.ndim != 1:
            raise ValueError(f"records[{i}].token_times must be a flat list of seconds, got shape {times.shape}")
        if times.size == 0:
            raise ValueError(f"records[{i}] has no token_times: a request must produce at least one token")
        if not (np.isfinite(times).all() and np.isfinite(r.start)):
            raise ValueError(f"records[{i}] holds NaN or infinite timestamps")
        if times[0] < r.start or (np.diff(times) < 0).any():
            raise ValueError(f"records[{i}] timestamps must be non-decreasing and not before start={r.start}")


def latency_summary(records: Sequence[RequestTiming], *,
                    percentiles: Sequence[float] = PERCENTILES) -> dict[str, float]:
    """TTFT / TPOT / end-to-end percentiles (seconds), means, and throughput over ``records``.

    Keys: ``n_requests``, ``output_tokens``, ``ttft_p50`` ... ``e2e_p99``, ``ttft_mean``, ``tpot_mean``,
    ``e2e_mean``, ``tokens_per_s`` and ``requests_per_s`` (over the span from the first start to the last
    token). TPOT figures use only requests with >= 2 tokens (NaN if there are none).
    """
    _check(records, percentiles)
    ttft = np.array([r.ttft for r in records])
    e2e = np.array([r.e2e for r in records])
    tpot = np.array([r.tpot for r in records if r.tpot is not None])
    out: dict[str, float] = {"n_requests": float(len(records)),
                             "output_tokens": float(sum(len(r.token_times) for r in records))}
    for name, values in (("ttft", ttft), ("tpot", tpot), ("e2e", e2e)):
        for p in percentiles:
            out[f"{name}_p{p:g}"] = float(np.percentile(values, p)) if values.size else float("nan")
        out[f"{name}_mean"] = float(values.mean()) if values.size else float("nan")
    span = max(r.token_times[-1] for r in records) - min(r.start for r in records)
    out["tokens_per_s"] = out["output_tokens"] / span if span > 0 else float("inf")
    out["requests_per_s"] = len(records) / span if span > 0 else float("inf")
    return out


class _Recorder:
    """A ``generate`` streamer that stamps each step's tokens when they reach the host (a device sync)."""

    def __init__(self, timing: RequestTiming) -> None:
        self.timing = timing

    def __call__(self, tokens: torch.Tensor) -> None:
        tokens.to("cpu")  # wait for the device: the token exists only once it is computed
        self.timing.token_times.append(time.perf_counter())


def measure_generate(model: nn.Module, prompts: Sequence[torch.Tensor], *, max_new_tokens: int,
                     concurrency: int = 1, **generate_kwargs: Any) -> list[RequestTiming]:
    """Run one ``mlcore.inference.generate`` per prompt (each (T,) or (1, T)), ``concurrency`` at a time on
    threads, all submitted at once (so queueing shows in TTFT); return their timings in prompt order."""
    from mlcore.inference import generate

    if len(prompts) == 0:
        raise ValueError("prompts must hold at least one prompt, got none")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
    if "streamer" in generate_kwargs:
        raise ValueError("measure_generate installs its own streamer; do not pass streamer=")
    for i, p in enumerate(prompts):
        if not isinstance(p, torch.Tensor):
            raise ValueError(f"prompts[{i}] must be a tensor of token ids, (T,) or (1, T), got {type(p).__name__}")
    batch = [p[None] if p.dim() == 1 else p for p in prompts]
    for i, p in enumerate(batch):
        if p.dim() != 2 or p.shape[0] != 1:
            raise ValueError(f"prompts[{i}] must have shape (T,) or (1, T), got {tuple(prompts[i].shape)}")

    start = time.perf_counter()
    timings = [RequestTiming(start) for _ in batch]

    def one(i: int) -> None:
        with torch.no_grad():
            generate(model, batch[i], max_new_tokens=max_new_tokens, streamer=_Recorder(timings[i]),
                     **generate_kwargs)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(len(batch))))
    return timings
