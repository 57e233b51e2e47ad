"""Compiled-decode rows for ``benchmarks/decode.py`` (not a topic: the underscore keeps the suite from running it).

``compiled_rows(ctx, pair, tokenizer, batch, prompt=..., new=..., rounds=...)`` measures
``generate(..., cache="static", compile=True)`` (prefill eager, every decode step one ``torch.compile``d graph;
on CUDA ``mode="reduce-overhead"``, i.e. CUDA graphs) against transformers' eager ``generate`` (DynamicCache)
and mlcore's eager StaticCache ``generate``, with the decode timing of ``decode.py``: per round
t(generate N) - t(generate 1), the calls interleaved. Tokens must equal transformers' (``valid``).

Cost: the first call compiles (``compile_s`` in the row, prefill and first step included: 22-32 s for the 4M
target and for llama-25M on the shared 2-core CPU with a cold inductor cache, ~40 s under load; 4-7 s with a
warm on-disk cache). On CPU the batch-1 graph computes its linear layers as row dot products (see
``mlcore.inference.compiled``); ``frac_roofline`` pairs each round with a timing of the probe's GEMV (decode.py).
Issue 9's CUDA goal (3x transformers' eager generate at batch 1, llama-25M) sits on the CUDA row; the
reduce-overhead path has not been run on a GPU yet.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterator
from typing import Any

import torch

from mlcore.bench import Context, Goal, Result

from ._decode_setup import (
    GemvCeiling,
    Pair,
    first_difference,
    interleaved,
    mean_decode_context,
    paired_difference,
    paired_roofline,
    prompts,
    roofline_bytes,
)

TWIN = "transformers generate (DynamicCache)"


def _goal(ctx: Context, key: str, batch: int, dtype: str) -> Goal | list[Goal] | None:
    """Issue 9's CUDA goal; on CPU the trained target's 2x goal (which the eager row carries too) and the
    llama-25M roofline goal."""
    if ctx.device.type == "cuda" and key == "llama-25M" and batch == 1:
        return Goal(">=", 3.0, "static + compile vs HF eager generate, CUDA batch 1", metric="speedup_valid")
    if ctx.device.type == "cpu" and key == "tiny-4M" and batch == 1 and dtype == "float32":
        return Goal(">=", 2.0, "trained 4M target float32, static + compile: decode tok/s vs HF generate "
                    "(batch 1)", metric="speedup_valid")
    if ctx.device.type == "cpu" and key == "llama-25M" and batch == 1:
        return Goal(">=", 0.85, f"llama-25M {dtype}: StaticCache decode / roofline, compiled step (batch 1)",
                    metric="frac_roofline")
    return None


def compiled_rows(ctx: Context, pair: Pair, tokenizer: Any, batch: int, *, prompt: int, new: int,
                  rounds: int, ceiling: GemvCeiling | None = None) -> Iterator[Result]:
    """One decode row: mlcore StaticCache + torch.compile vs transformers' generate (and mlcore eager static)."""
    from mlcore.inference import generate
    from mlcore.inference.compile_options import resolve_mode
    from mlcore.inference.compiled import decoder_for
    from mlcore.inference.hf import hf_generate

    dev, P, N = ctx.device, prompt, new
    params = {"task": "decode", "model": pair.key, "batch": batch, "prompt": P, "new": N,
              "threads": torch.get_num_threads(), "cache": "static+compile"}
    name = "mlcore static + torch.compile" + (" (CUDA graphs)" if dev.type == "cuda" else "")
    ids = prompts(pair.key, batch, P, dev, tokenizer)
    calls = {
        "hf": lambda n: hf_generate(pair.hf, ids, max_new_tokens=n),
        "eager": lambda n: generate(pair.mlcore, ids, max_new_tokens=n, cache="static"),
        "compiled": lambda n: generate(pair.mlcore, ids, max_new_tokens=n, cache="static", compile=True),
    }
    with torch.no_grad():
        start = time.perf_counter()
        try:
            calls["compiled"](2)  # compiles the decode step (prefill + one compiled step)
        except Exception as exc:  # noqa: BLE001 -- a compiler failure becomes a note row, not a crash
            yield Result("decode", name, params, str(dev), pair.dtype, math.nan, 0.0, unit="tokens/s",
                         extra={"note": f"not available: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"},
                         goal=_goal(ctx, pair.key, batch, pair.dtype))
            return
        if dev.type == "cuda":
            torch.cuda.synchronize()
        compile_s = time.perf_counter() - start
        outputs = {k: call(N) for k, call in calls.items()}
    fns = {} if ceiling is None else ceiling.fns()  # the roofline's GEMV candidates, in the same rounds
    for k, call in calls.items():
        fns[f"{k}|full"] = lambda call=call: call(N)
        fns[f"{k}|first"] = lambda call=call: call(1)
    with torch.no_grad():
        per = interleaved(fns, device=dev, rounds=rounds, warm=False)
    rounds_s = {k: [a - b for a, b in zip(per[f"{k}|full"], per[f"{k}|first"])] for k in calls}
    decode = {k: paired_difference(per[f"{k}|full"], per[f"{k}|first"]) for k in calls}
    diff = first_difference(outputs["compiled"], outputs["hf"])
    valid = diff is None
    paired = statistics.median(h / max(m, 1e-9) for h, m in zip(rounds_s["hf"], rounds_s["compiled"]))
    vs_eager = statistics.median(e / max(m, 1e-9) for e, m in zip(rounds_s["eager"], rounds_s["compiled"]))
    extra = {
        "tpot_ms": round(decode["compiled"].median / (N - 1) * 1e3, 3),
        "twin_tpot_ms": round(decode["hf"].median / (N - 1) * 1e3, 3),
        "eager_static_tpot_ms": round(decode["eager"].median / (N - 1) * 1e3, 3),
        "paired_speedup": round(paired, 3),
        "speedup_valid": round(paired, 4) if valid else None,
        "speedup_vs_eager_static": round(vs_eager, 3),
        "equals_eager_static": torch.equal(outputs["compiled"], outputs["eager"]),
        "valid": valid,
        "first_diff_column": diff,
        "compile_s": round(compile_s, 1),
        "mode": "reduce-overhead" if dev.type == "cuda" else "default",
        # the GEMV the float linears of the decoder that ran use (mlcore.inference.gemv_choice)
        "linear_gemv": decoder_for(pair.mlcore, batch=batch, needed=P + N - 1, mode=resolve_mode(True, dev)).gemv,
    }
    if ceiling is not None:  # the eager rows' roofline (decode.py): per round, the ideal step over the measured one
        step_bytes = roofline_bytes(pair.mlcore, batch, mean_decode_context(P, N))
        gbs, ceiling_name = ceiling.per_round(per)
        frac, median_gbs = paired_roofline(step_bytes, [r / (N - 1) for r in rounds_s["compiled"]], gbs)
        eager_frac, _ = paired_roofline(step_bytes, [r / (N - 1) for r in rounds_s["eager"]], gbs)
        extra.update(frac_roofline=round(frac, 3), eager_frac_roofline=round(eager_frac, 3),
                     gemv_gbs=round(median_gbs, 2), gemv_kernel=ceiling_name)
    yield Result.from_timing("decode", name, params, device=dev, dtype=pair.dtype, timing=decode["compiled"],
                             twin=TWIN, twin_timing=decode["hf"], work=batch * (N - 1), unit="tokens/s",
                             extra=extra, goal=_goal(ctx, pair.key, batch, pair.dtype))
