"""llama.cpp beside transformers and mlcore: greedy decode tokens/s at each precision, on the same prompt.

On a CPU the engine people actually pick is llama.cpp, so it is the anchor here. For each model (``llama-25M``,
the issue's 27M config with seeded random weights; the full preset adds ``tiny-4M``, the trained target), batch 1:

- transformers ``generate`` (DynamicCache) in fp32 and bf16;
- mlcore ``generate`` with a StaticCache in fp32 and bf16, and with weight-only ``quantize_model`` int8
  (``aten._weight_int8pack_mm``) and int4 in groups of 64 (``_weight_int4pack_mm_for_cpu``), both with bf16
  activations, the case those kernels are fast for (the full preset adds int8 with fp32 activations, which
  ``QuantizedLinear`` serves by dequantizing); the tied ``lm_head`` stays in float (``quantize_model`` never
  unties it); fp32, int8 and int4 again with ``generate(compile=True)`` (every decode step one ``torch.compile`` graph,
  compiled in the warm-up run; the goal's "best int8/int4" row picks the fastest of all of them);
- llama.cpp (``llama-cpp-python``) on GGUF files written by ``mlcore.model.gguf_export``: f32, f16, bf16,
  q8_0, q4_0, and q4_K_M made by llama.cpp's own quantizer from the f32 file.

Every engine gets torch's thread count (``torch.get_num_threads()``: 2 on the project's 2-core machine; run with
``OMP_NUM_THREADS=1`` for a single-threaded comparison, which a machine shared with other jobs disturbs far less:
two spinning threads on two busy cores stall each other at every barrier).

**Correctness gate before any timing**: llama.cpp f32 (with an f32 K/V cache) must give last-position logits
within 1e-3 of mlcore fp32's and the same first 8 greedy tokens; otherwise every llama.cpp row of that model is
``valid=False`` and not timed. ``logit_err`` (max |logit - mlcore fp32's|) and ``tokens_match`` (share of the
greedy tokens equal to mlcore fp32's) say what each lower precision costs in output.

**Timing**: each run continues the prompt by ``new`` tokens; *prefill* (``prefill_ms``) is the time to the first
new token, *decode* the time of the other ``new - 1``; the figure is decode tokens/s, median of ``runs`` runs
after one warm-up. ``mb_per_token`` = weight bytes + K/V bytes a decode step reads (mean context);
``gbs`` = that times tokens/s; ``frac_read_bw`` = gbs / the probe's read bandwidth. Files under the 32 MB L3
can exceed 1: they are served from cache, not DRAM. ``vs_hf_fp32`` = tokens/s over transformers fp32's.
``step_ms_p50``: the median single decode step over all runs, which a busy machine disturbs less than a total.

**Profile** (``task=profile``): 16 mlcore decode steps under ``torch.profiler`` (which slows the small ops):
``matmul_share`` of the step time spent in the matmul kernels, ``matmul_gbs`` the weight bandwidth those kernels
reach alone, ``step_gbs`` the whole step's, ``other_ms_per_token`` what is neither (norms, RoPE, attention,
cache writes, dispatch): the gap a fused, framework-free engine closes.

Without ``llama_cpp`` the llama.cpp rows become one note saying how to enable it (``make anchors``); the quick
preset then measures nothing else (the decode and quant topics time transformers and mlcore), the full one
still times the transformers and mlcore columns.
"""

from __future__ import annotations

import math
import statistics
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from mlcore.bench import Context, Goal, Result, Table
from mlcore.bench.llamacpp import (
    LlamaCppRunner,
    correctness_gate,
    decode_weight_bytes,
    llama_cpp_missing,
    quantize_gguf,
)

from ._anchors_setup import (
    Case,
    Engine,
    build_case,
    hf_engines,
    kv_bytes,
    llamacpp_engine,
    mlcore_engines,
    profile_decode,
    to_timing,
)
from ._decode_setup import mean_decode_context

DESCRIPTION = ("llama.cpp (GGUF f32 / f16 / bf16 / q8_0 / q4_0 / q4_K_M) beside transformers and mlcore: decode "
               "tokens/s, bytes per token and bandwidth, behind a logits + greedy-token correctness gate")
TABLES = [
    Table("llama.cpp availability", where={"task": "note"}, columns=("remark",)),
    Table("Decode tokens/s per engine and format (batch 1, same prompt)", where={"task": "decode"},
          params=("model", "bits", "format"),
          columns=("prefill_ms", "mb_per_token", "gbs", "frac_read_bw", "vs_hf_fp32", "logit_err", "tokens_match",
                   "step_ms_p50", "valid", "remark")),
    Table("mlcore against llama.cpp at comparable bits", where={"task": "goal"}, params=("model",),
          columns=("mlcore_format", "valid", "remark")),
    Table("Where an mlcore decode step goes (torch.profiler)", where={"task": "profile"},
          columns=("ms_per_token", "dense_mm_ms", "lowbit_mm_ms", "other_ms_per_token", "matmul_share",
                   "matmul_gbs", "step_gbs")),
    Table("llama.cpp correctness gate (f32 vs mlcore fp32)", where={"task": "gate"},
          columns=("max_abs_diff", "tokens_checked", "tokens_equal", "valid", "reason")),
]
GATE_ATOL = 1e-3
GATE_TOKENS = 8
LLAMA_FORMATS = (("f32", "32"), ("f16", "16"), ("bf16", "16"), ("q8_0", "8"), ("q4_0", "4"), ("q4_K_M", "4"))


def _settings(ctx: Context) -> tuple[tuple[str, ...], int, int, int]:
    """(models, prompt tokens, new tokens, timed runs)."""
    return (("llama-25M",), 64, 32, 3) if ctx.quick else (("llama-25M", "tiny-4M"), 128, 128, 7)


def _note(ctx: Context, name: str, params: dict, why: str, goal: Goal | None = None) -> Result:
    return Result("anchors", name, params, str(ctx.device), None, math.nan, 0.0, unit="tokens/s",
                  extra={"remark": why}, goal=goal)


def _goals(key: str) -> dict[str, Goal]:
    if key != "llama-25M":
        return {}
    return {"fp32": Goal(">=", 0.35, "llama-25M: mlcore fp32 decode / llama.cpp f32"),
            "best": Goal(">=", 0.5, "llama-25M: mlcore best int8/int4 decode / llama.cpp q8_0")}


def _llamacpp(case: Case, folder: Path, ref_logits: torch.Tensor, ref_tokens: list[int],
              n_ctx: int) -> tuple[list[Engine], dict]:
    """Write the GGUF files, run the gate on f32; the llama.cpp engines (none when the gate fails)."""
    from mlcore.model.gguf_export import save_gguf

    paths = {}
    for fmt, _ in LLAMA_FORMATS:
        if fmt != "q4_K_M":
            paths[fmt] = save_gguf(case.model, folder / f"{case.key}-{fmt}.gguf", tokenizer=case.tokenizer,
                                   dtype=fmt, name=case.key)
    threads = torch.get_num_threads()  # llama.cpp gets torch's thread count: 2 on the project's 2-core machine
    paths["q4_K_M"] = quantize_gguf(paths["f32"], folder / f"{case.key}-q4_K_M.gguf", "q4_K_M", n_threads=threads)
    f32 = LlamaCppRunner(paths["f32"], n_threads=threads, n_ctx=n_ctx, kv_type="f32")
    gate = correctness_gate(ref_logits.numpy(), ref_tokens, f32, case.prompt, atol=GATE_ATOL, n_tokens=GATE_TOKENS)
    report = {"max_abs_diff": gate.max_abs_diff, "tokens_checked": gate.tokens_checked,
              "tokens_equal": gate.tokens_equal, "valid": gate.valid, "reason": gate.reason or "ok"}
    if not gate.valid:
        f32.close()
        return [], report
    engines = [llamacpp_engine(f32, "f32", "32", case.prompt, decode_weight_bytes(paths["f32"]))]
    for fmt, bits in LLAMA_FORMATS[1:]:
        runner = LlamaCppRunner(paths[fmt], n_threads=threads, n_ctx=n_ctx, kv_type="f16")
        engines.append(llamacpp_engine(runner, fmt, bits, case.prompt, decode_weight_bytes(paths[fmt])))
    return engines, report


def _measure(ctx: Context, case: Case, e: Engine, new: int, runs: int, ref_logits: torch.Tensor,
             ref_tokens: list[int]) -> tuple[Result, object]:
    e.run(new)  # warm-up
    samples = [e.run(new) for _ in range(runs)]
    decode = to_timing([s.decode_s for s in samples])
    prefill = to_timing([s.prefill_s for s in samples])
    c = case.model.config
    context = mean_decode_context(len(case.prompt), new)  # the mean keys of the new - 1 steps: P + new / 2
    per_token = e.weight_bytes + kv_bytes(c, context, e.kv_itemsize)
    rate = (new - 1) / decode.median
    tokens = samples[0].tokens
    extra = {"prefill_ms": round(prefill.median * 1e3, 2), "mb_per_token": round(per_token / 1e6, 2),
             "gbs": round(per_token * rate / 1e9, 2), "frac_read_bw": round(per_token * rate / 1e9 /
                                                                            ctx.probe.read_gbs, 3),
             "logit_err": float(f"{(e.logits().double() - ref_logits.double()).abs().max():.3g}"),
             "tokens_match": round(sum(a == b for a, b in zip(tokens, ref_tokens)) / len(ref_tokens), 3),
             "step_ms_p50": round(statistics.median(x for s in samples for x in s.steps) * 1e3, 2),
             "valid": True, "threads": torch.get_num_threads(), **e.extra}
    params = {"task": "decode", "model": case.key, "bits": e.bits, "format": e.fmt,
              "threads": torch.get_num_threads(), "prompt": len(case.prompt),
              "new": new}
    return Result.from_timing("anchors", e.engine, params, device="cpu", dtype=e.fmt, timing=decode,
                              work=new - 1, unit="tokens/s", extra=extra), decode


def _profile(case: Case, engine: Engine, steps: int = 16) -> dict:
    """Matmul kernels' share of an mlcore decode step and the bandwidth they reach alone (``torch.profiler``)."""
    dense_s, lowbit_s, total_s = profile_decode(engine.module, case.prompt, steps)
    mm_s = dense_s + lowbit_s
    return {"matmul_share": round(mm_s / total_s, 3), "dense_mm_ms": round(dense_s / steps * 1e3, 2),
            "lowbit_mm_ms": round(lowbit_s / steps * 1e3, 2),
            "matmul_gbs": round(engine.weight_bytes * steps / mm_s / 1e9, 2) if mm_s else math.nan,
            "step_gbs": round(engine.weight_bytes * steps / total_s / 1e9, 2),
            "ms_per_token": round(total_s / steps * 1e3, 2), "other_ms_per_token": round((total_s - mm_s) / steps
                                                                                           * 1e3, 2)}


def run(ctx: Context) -> Iterator[Result]:
    if ctx.device.type != "cpu":
        yield _note(ctx, "llama.cpp", {"task": "note"}, "CPU-only topic (llama.cpp's CPU backend); run --device cpu")
        return
    models, prompt_len, new, runs = _settings(ctx)
    why = llama_cpp_missing()
    if why:
        yield _note(ctx, "llama.cpp", {"task": "note"}, why)
        if ctx.quick:  # the transformers / mlcore columns alone are the decode and quant topics' business
            for key in models:
                for label, goal in _goals(key).items():
                    yield _note(ctx, f"mlcore vs llama.cpp ({label})", {"task": "goal", "model": key, "pair": label},
                                why, goal)
            return
    with tempfile.TemporaryDirectory(prefix="mlcore-anchors-") as tmp:
        for key in models:
            yield from _model_rows(ctx, build_case(key, prompt_len), Path(tmp), new, runs, why)


def _model_rows(ctx: Context, case: Case, folder: Path, new: int, runs: int, why: str | None) -> Iterator[Result]:
    mlcore = mlcore_engines(case, slow=not ctx.quick)
    ref = mlcore[0]
    ref_logits = ref.logits()
    ref_tokens = ref.run(new).tokens
    engines = hf_engines(case) + mlcore
    goals = _goals(case.key)
    gate: dict = {}
    if why is None:
        llama, gate = _llamacpp(case, folder, ref_logits, ref_tokens, n_ctx=len(case.prompt) + new + 8)
        engines += llama
        yield Result("anchors", "llama.cpp f32 gate", {"task": "gate", "model": case.key}, "cpu", "f32",
                     gate["max_abs_diff"], 0.0, unit="max |logit diff|", extra=gate)
    rows: dict[tuple[str, str], tuple[Result, object]] = {}
    try:
        for e in engines:
            rows[(e.engine, e.fmt)] = _measure(ctx, case, e, new, runs, ref_logits, ref_tokens)
    finally:
        for e in engines:
            e.close()
    if gate and not gate["valid"]:
        for fmt, bits in LLAMA_FORMATS:
            yield _note(ctx, "llama.cpp", {"task": "decode", "model": case.key, "bits": bits, "format": fmt},
                        f"invalid, not timed: {gate['reason']}")
    hf32 = rows[("transformers", "fp32")][0].median
    for result, _ in rows.values():
        result.extra["vs_hf_fp32"] = round(result.median / hf32, 2)
        yield result
    yield from _goal_rows(ctx, case, rows, goals, why or (None if gate.get("valid") else gate.get("reason")))
    for e in mlcore:
        if "compiled" in e.fmt:  # the profiler would time the eager steps of the same model again
            continue
        prof = _profile(case, e)
        yield Result("anchors", f"mlcore {e.fmt}", {"task": "profile", "model": case.key, "format": e.fmt}, "cpu",
                     e.fmt, prof["ms_per_token"], 0.0, unit="ms", extra=prof)


def _goal_rows(ctx: Context, case: Case, rows: dict, goals: dict[str, Goal], why: str | None) -> Iterator[Result]:
    """mlcore fp32 vs llama.cpp f32, and mlcore's best int8/int4 vs llama.cpp q8_0 (the issue's targets)."""
    params = {"task": "goal", "model": case.key}
    best = max((k for k in rows if k[0] == "mlcore" and rows[k][0].params["bits"] in ("8", "4")),
               key=lambda k: rows[k][0].median)
    for label, mine, twin in (("fp32", ("mlcore", "fp32"), ("llama.cpp", "f32")),
                              ("best", best, ("llama.cpp", "q8_0"))):
        name = f"mlcore {mine[1]} vs llama.cpp {twin[1]}"
        if twin not in rows:
            yield _note(ctx, name, params | {"pair": label}, why or "llama.cpp not measured", goals.get(label))
            continue
        (r, t), (tr, tt) = rows[mine], rows[twin]
        yield Result.from_timing("anchors", name, params | {"pair": label}, device="cpu", dtype=mine[1], timing=t,
                                 twin=f"llama.cpp {twin[1]}", twin_timing=tt, work=r.params["new"] - 1,
                                 unit="tokens/s", goal=goals.get(label),
                                 extra={"mlcore_format": mine[1], "valid": tr.extra["valid"]})
