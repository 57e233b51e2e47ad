"""Serving: one request at a time vs static batching vs continuous batching, and prefix caching, on the tiny target.

The engine (``mlcore.serve.Engine``) is measured in-process, no HTTP (loopback serving adds the same cost to
every mode): a driver thread submits a **seeded Poisson workload** (100 requests/s, faster than any mode serves,
so every mode runs saturated and tokens/s measures its capacity; prompt lengths uniform in [8, 64] tokens; output
lengths bimodal as in chat traffic: 75 % short, uniform in [8, 32], 25 % long, uniform in [96, 160] greedy
tokens) while the engine's own thread runs its decode loop. Modes (same workload, same pool of 256 blocks x 16 tokens, same largest batch of 16):

- ``one-at-a-time``: ``max_running=1`` (a plain server calling ``generate`` per request);
- ``static``: ``policy="static"``, batches of up to 16 (the first request waits up to 100 ms for a full batch),
  and a batch admits nobody until its longest member has finished;
- ``continuous``: iteration-level scheduling (Orca), up to 16 running, admission every step.

Figures per mode: output tokens/s (all output tokens / time from first arrival to last finish), time to first
token (TTFT: arrival -> first token, queueing included) and time per output token (TPOT: (finish - first) /
(n - 1)) at p50 and p99; ``serve_pool_use.png`` plots the blocks in use over time for each mode.

Prefix caching: the tiny target's context is 256 tokens (``max_position_embeddings``), so the "shared 256-token
system prompt" of the issue cannot fit with a question and an answer; the shared prompt here is **192 tokens**
(12 blocks of 16), each request adds an 8-24-token question and asks for 16 tokens (at most 232 tokens in all).
Requests arrive at a light Poisson load (4/s) so TTFT mostly measures the prefill, with the prefix cache on and
off; the figure is the median over all requests but the first (which fills the cache in both runs).

Goals (issue 13, CPU, tiny target): continuous >= 3x one-at-a-time output tok/s and >= 1.5x static, with a
lower p99 TTFT than static; prefix caching cuts the shared-prompt TTFT (median) >= 3x. Speed-up > 1 = the
first-named mode better.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import time
from collections.abc import Iterator

from mlcore.bench import Context, Goal, Result, Table
from mlcore.serve import Engine, EngineConfig, SamplingParams

DESCRIPTION = "serving engine: one-at-a-time vs static vs continuous batching; prefix caching TTFT"
TABLES = [Table("batching", where={"task": "batching"}, params=("mode",),
                columns=("requests", "output_tokens", "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms",
                         "peak_blocks", "ttft_p99_static_over_continuous")),
          Table("prefix caching", where={"task": "prefix"}, params=("mode",),
                columns=("requests", "shared_prompt_tokens", "ttft_p50_ms", "ttft_p99_ms", "prefix_hits"))]
SHARED_PROMPT = 192
BLOCKS, BLOCK_SIZE = 256, 16


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100])."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def workload(n: int, rate: float, seed: int, vocab: int) -> list[tuple[float, list[int], int]]:
    """(arrival time, prompt ids, output length) for ``n`` requests with Poisson arrivals at ``rate`` per second."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        prompt = [rng.randrange(vocab - 1) for _ in range(rng.randint(8, 64))]
        out.append((t, prompt, rng.randint(8, 32) if rng.random() < 0.75 else rng.randint(96, 160)))
    return out


def drive(engine: Engine, reqs: list[tuple[float, list[int], int]]) -> dict:
    """Submit ``reqs`` at their arrival times to the running engine; wait for all; return the figures."""
    engine.history.clear()
    engine.start()
    t0 = time.perf_counter()
    seqs = []
    for at, prompt, n in reqs:
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        seqs.append(engine.submit(prompt, SamplingParams(max_tokens=n)))
    while any(s.finish_time is None for s in seqs):
        time.sleep(0.002)
    engine.shutdown()
    start, end = min(s.arrival for s in seqs), max(s.finish_time for s in seqs)
    ttft = [s.first_token_time - s.arrival for s in seqs]
    tpot = [(s.finish_time - s.first_token_time) / (len(s.output) - 1) for s in seqs if len(s.output) > 1]
    tokens = sum(len(s.output) for s in seqs)
    return {"tok_s": tokens / (end - start), "output_tokens": tokens, "requests": len(seqs),
            "ttft_p50_ms": 1e3 * percentile(ttft, 50), "ttft_p99_ms": 1e3 * percentile(ttft, 99),
            "tpot_p50_ms": 1e3 * percentile(tpot, 50), "tpot_p99_ms": 1e3 * percentile(tpot, 99),
            "ttft": ttft, "history": [(t - t0, used) for t, used, _, _ in engine.history],
            "peak_blocks": max((u for _, u, _, _ in engine.history), default=0), "stats": engine.stats()}


def plot_pool(histories: dict[str, list[tuple[float, int]]], path: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5))
    ax = fig.add_subplot()
    for mode, hist in histories.items():
        ax.plot([t for t, _ in hist], [u for _, u in hist], label=mode, lw=1)
    ax.axhline(BLOCKS, color="gray", ls=":", lw=1, label="pool size")
    ax.set_xlabel("time since first arrival (s)")
    ax.set_ylabel("KV blocks in use")
    ax.set_title("block-pool use, same Poisson workload")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run(ctx: Context) -> Iterator[Result]:
    from mlcore.training.assets import load_tiny

    quick = ctx.quick or bool(os.environ.get("MLCORE_QUICK"))
    model, tok = load_tiny("target")
    model = model.to(ctx.device)
    vocab = model.config.vocab_size
    n, rate = (24, 100.0) if quick else (96, 100.0)
    reqs = workload(n, rate, seed=0, vocab=vocab)
    modes = {"one-at-a-time": EngineConfig(num_blocks=BLOCKS, block_size=BLOCK_SIZE, max_running=1,
                                           prefix_caching=False),
             "static": EngineConfig(num_blocks=BLOCKS, block_size=BLOCK_SIZE, max_running=16, policy="static",
                                    batch_timeout=0.1, prefix_caching=False),
             "continuous": EngineConfig(num_blocks=BLOCKS, block_size=BLOCK_SIZE, max_running=16,
                                        max_step_tokens=256, prefix_caching=False)}
    warm = Engine(model, modes["continuous"])
    drive(warm, reqs[:4])  # warm-up: allocator, kernels
    figs = {mode: drive(Engine(model, cfg), reqs) for mode, cfg in modes.items()}
    plot_pool({m: f["history"] for m, f in figs.items()}, str(ctx.out_dir / "serve_pool_use.png"))
    cont, one, static = figs["continuous"], figs["one-at-a-time"], figs["static"]
    ttft_ratio = static["ttft_p99_ms"] / cont["ttft_p99_ms"]
    keys = ("requests", "output_tokens", "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms", "peak_blocks")
    for mode, f in figs.items():
        extra = {k: round(f[k], 2) for k in keys}
        goal, twin, twin_median = None, None, None
        if mode == "continuous":
            extra["ttft_p99_static_over_continuous"] = round(ttft_ratio, 2)
            twin, twin_median = "one-at-a-time", one["tok_s"]
            goal = [Goal(">=", 3.0, "continuous / one-at-a-time output tok/s"),
                    Goal(">", 1.0, "static p99 TTFT / continuous p99 TTFT", metric="ttft_p99_static_over_continuous")]
        yield Result("serve", mode, {"task": "batching", "mode": mode, "requests": n, "rate": rate},
                     str(ctx.device), "float32", f["tok_s"], 0.0, unit="tokens/s", twin=twin,
                     twin_median=twin_median, extra=extra, goal=goal, runs=1)
    yield Result("serve", "continuous vs static", {"task": "batching", "mode": "continuous vs static",
                                                    "requests": n, "rate": rate},
                 str(ctx.device), "float32", cont["tok_s"], 0.0, unit="tokens/s", twin="static",
                 twin_median=static["tok_s"], extra={"ttft_p99_static_over_continuous": round(ttft_ratio, 2)},
                 goal=Goal(">=", 1.5, "continuous / static batching output tok/s"), runs=1)
    yield from _prefix(ctx, model, vocab, quick)


def _prefix(ctx: Context, model, vocab: int, quick: bool) -> Iterator[Result]:
    rng = random.Random(1)
    system = [rng.randrange(vocab - 1) for _ in range(SHARED_PROMPT)]
    n = 8 if quick else 40
    t, reqs = 0.0, []
    for _ in range(n):
        t += rng.expovariate(4.0)
        reqs.append((t, system + [rng.randrange(vocab - 1) for _ in range(rng.randint(8, 24))], 16))
    figs = {}
    for mode, caching in (("no prefix cache", False), ("prefix cache", True)):
        engine = Engine(model, EngineConfig(num_blocks=BLOCKS, block_size=BLOCK_SIZE, prefix_caching=caching))
        figs[mode] = f = drive(engine, reqs)
        f["ttft_warm"] = statistics.median(f["ttft"][1:])  # the first request fills the cache either way
    base = figs["no prefix cache"]
    for mode, f in figs.items():
        extra = {"requests": n, "shared_prompt_tokens": SHARED_PROMPT, "ttft_p50_ms": round(f["ttft_p50_ms"], 2),
                 "ttft_p99_ms": round(f["ttft_p99_ms"], 2), "prefix_hits": f["stats"]["prefix_hits"]}
        cached = mode == "prefix cache"
        yield Result("serve", mode, {"task": "prefix", "mode": mode, "requests": n}, str(ctx.device), "float32",
                     f["ttft_warm"], 0.0, unit="s", extra=extra, runs=1,
                     twin="no prefix cache" if cached else None, twin_median=base["ttft_warm"] if cached else None,
                     goal=Goal(">=", 3.0, "shared-prompt TTFT: no prefix cache / prefix cache (median)")
                     if cached else None)
