"""KV-cached decoding: mlcore's ``generate`` against transformers' ``generate`` on the same weights.

Models (see ``_decode_setup.py``): the project's trained 4M target and the issue's ~27M Llama config (24.7M
parameters, random seeded weights), in float32 and bfloat16 on CPU, bfloat16 on CUDA. For each model, dtype and
batch, every call continues the same prompt greedily; the benchmark **asserts token equality** with transformers
(a row whose tokens differ is kept but marked ``valid=False``, and its goal is not counted as met).

- ``task=decode``: decode tokens/s = B (N - 1) / [t(generate N) - t(generate 1)], per round (the two calls are
  timed back to back in every round, so the difference sees one machine load); one row per mlcore cache kind,
  the twin is transformers' ``generate`` with its default DynamicCache (its StaticCache in ``speedup_vs_hf_static``).
  ``tpot_ms`` = time per output token. ``paired_speedup``: the median over rounds of that round's twin / mlcore
  decode time (measured seconds apart, so robust to a shared machine's load drifting between rounds); the
  speed-up goals use it, and count only rows whose tokens equal the twin's. ``frac_roofline``: the decode
  roofline, (weight bytes + K/V bytes read per step) / the probe's batch-1 GEMV bandwidth for this dtype, divided
  by the measured step time. Bytes per step (``roofline_bytes_per_step``, ``_decode_setup.roofline_bytes``): every
  parameter once (the tied head once), less all but B rows of an untied embedding and all but one row of a learned
  position table, plus the K/V of the mean context, ``2 L B Hkv (P + N/2) D`` elements in the model's dtype.
  Every GEMV candidate of the probe (library layouts, the compiled row dots of ``mlcore._row_dot`` on the plain
  and the tiled weight) is timed in every round beside the steps, and a round's
  ceiling is the fastest of them in that round (``gemv_kernel``: the one fastest most often); the fraction is the
  median of the per-round fractions (``gemv_gbs``: the median ceiling), so a VM whose speed drifts by 1.5x
  between the probe and a row does not move the fraction with it.
- ``task=prefill``: prompt tokens/s of t(generate 1) (time to first token: prefill + one argmax).
- ``task=context``: time per generated token at context T without a cache (``generate_no_cache``: the whole
  prefix again, O(T) matmul work per token and O(T^2) attention) against one StaticCache decode step.
- ``task=speculative``: ``speculative_generate`` with the trained draft vs HF assisted generation on the same
  pair; ``acceptance`` = accepted / proposed draft tokens; ``speedup_vs_target`` = over the target alone.
- ``task=memory``: bytes a cache holds after T tokens when sized for the model's 512 positions (dynamic grows;
  static and int8 reserve; paged counts the blocks this sequence holds; sliding stops at window + sinks) against
  transformers' DynamicCache and the formula 2 L Hkv T D bytes.

On CPU the topic runs on ``CPU_THREADS`` = 1 thread (restored afterwards), mlcore and transformers alike, and
measures the probe's GEMV ceiling on that thread, on a weight the size of the largest model's, for the roofline.

``task=decode, cache=static+compile`` (``_decode_compiled.py``): ``generate(..., compile=True)``, every decode
step one ``torch.compile`` graph (CUDA graphs on CUDA; on CPU the float linears' GEMV that
``mlcore.inference.gemv_choice`` picks for the machine, shown as ``linear_gemv``: MKL's sgemv, inductor's GEMM
template (bf16 with AMX) or the row dots of
``mlcore._row_dot``), batch 1, with its
compile time (~15-50 s per model and dtype on the 2-core CPU) and the same roofline fraction. Both models are
compiled in every preset. The CUDA goal (3x transformers' eager generate, llama-25M, batch 1) sits on that row,
and so does the CPU roofline goal (85% for llama-25M): the compiled step is mlcore's StaticCache decode with the
per-step overhead gone, which is what a roofline is about; the eager row's fraction is reported beside it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from mlcore.bench import Context, Goal, Plot, Result, Table
from mlcore.bench.probe import gemv_kernels

from ._decode_compiled import compiled_rows
from ._decode_setup import (
    CACHE_KINDS,
    DTYPES,
    GemvCeiling,
    Pair,
    build_models,
    cache_missing,
    first_difference,
    hf_cache_bytes,
    interleaved,
    make_pair,
    mean_decode_context,
    missing,
    paired_difference,
    paired_roofline,
    prompts,
    roofline_bytes,
    to_timing,
    weight_bytes,
)

DESCRIPTION = ("greedy decoding, mlcore generate (each KV cache) vs transformers generate on the same weights; "
               "prefill, decode, roofline, no-cache curve, speculative decoding, KV memory")
TWIN = "transformers generate (DynamicCache)"
PLOTS = [
    Plot("time_per_token_vs_context", x="context", y="median", series="impl", where={"task": "context"},
         logx=True, logy=True, title="time per token vs context, llama-25M",
         ylabel="seconds per token"),
    Plot("kv_memory_vs_seq_len", x="seq_len", y="median", series="cache", where={"task": "memory"},
         title="KV memory vs tokens (llama-25M fp32, sized for 512)", ylabel="MiB (dynamic = paged = formula)"),
]
TABLES = [
    Table("Decode tokens/s (batch 1)", where={"task": "decode", "batch": 1}, params=("model",),
          columns=("tpot_ms", "paired_speedup", "speedup_vs_hf_static", "frac_roofline", "linear_gemv", "valid")),
    Table("Decode tokens/s (batch 8)", where={"task": "decode", "batch": 8}, params=("model",),
          columns=("tpot_ms", "paired_speedup", "speedup_vs_hf_static", "frac_roofline", "valid")),
    Table("Prefill (time to first token), StaticCache", where={"task": "prefill"}, params=("model", "batch")),
    Table("Time per token vs context: no cache vs StaticCache", where={"task": "context"},
          params=("context",), columns=("vs_cached",)),
    Table("Speculative decoding with the trained draft (batch 1)", where={"task": "speculative"},
          params=("k",), columns=("acceptance", "tokens_per_round", "speedup_vs_target",
                                  "hf_speedup_vs_hf_target", "valid")),
    Table("KV-cache memory", where={"task": "memory"}, params=("seq_len",), columns=("formula_mib",)),
]


# Decode is timed on one CPU thread: on a shared 2-core machine torch's OpenMP threads spin-wait and made the
# per-token small ops up to 15x slower (and noisy). The roofline ceiling is re-measured on the same thread count.
CPU_THREADS = 1


@dataclass(frozen=True)
class Settings:
    models: tuple[str, ...]
    dtypes: tuple[str, ...]
    batches: tuple[int, ...]
    prompt: int
    new: int
    rounds: int
    contexts: tuple[int, ...]
    draft_ks: tuple[int, ...]
    memory_lens: tuple[int, ...]
    compiled: tuple[str, ...] = ()  # models that also get a static + torch.compile row (batch 1)


def _settings(ctx: Context) -> Settings:
    cuda = ctx.device.type == "cuda"
    dtypes = ("bfloat16",) if cuda else ("float32", "bfloat16")
    both = ("tiny-4M", "llama-25M")
    if ctx.quick:
        return Settings(both, dtypes, (1,), 64, 32, 3, (32, 64, 128, 256), (4,), (64, 128, 256, 512),
                        compiled=both)
    return Settings(both, dtypes, (1, 8), 128, 128, 5, (32, 64, 128, 256, 511), (2, 4, 6),
                    (32, 64, 128, 256, 384, 512), compiled=both)


def _note(ctx: Context, name: str, params: dict, dtype: str | None, why: str, goal=None) -> Result:
    """A row that says what could not be measured in this checkout (NaN figure, reason in ``extra``)."""
    return Result("decode", name, params, str(ctx.device), dtype, math.nan, 0.0, unit="tokens/s",
                  extra={"note": f"not available: {why}"}, goal=goal)


def _goals(ctx: Context, key: str, dtype: str, kind: str, batch: int) -> list[Goal] | None:
    """Issue 9's targets, on the result each is about (CPU, batch 1, StaticCache)."""
    if ctx.device.type != "cpu" or kind != "static" or batch != 1:
        return None
    if key == "llama-25M":  # the roofline goal sits on the compiled row (see the module docstring)
        return [Goal(">=", 1.25, f"llama-25M {dtype}: decode tok/s vs HF generate (batch 1)", metric="speedup_valid")]
    if key == "tiny-4M" and dtype == "float32":
        return [Goal(">=", 2.0, "trained 4M target float32: decode tok/s vs HF generate (batch 1)",
                     metric="speedup_valid")]
    return None


def _headline(ctx: Context, s: Settings, pair: Pair, tokenizer, batch: int,
              ceilings: dict[str, GemvCeiling]) -> Iterator[Result]:
    """Prefill and decode rows of one model, dtype and batch: every available mlcore cache vs HF generate."""
    from mlcore.inference import generate

    dev, P, N = ctx.device, s.prompt, s.new
    params = {"model": pair.key, "batch": batch, "prompt": P, "new": N, "threads": torch.get_num_threads()}
    why_hf = missing("hf", "hf_generate")
    if why_hf:
        yield _note(ctx, "mlcore static", {"task": "decode", **params, "cache": "static"}, pair.dtype,
                    f"mlcore.inference.hf ({why_hf}): no twin to compare with")
        return
    from mlcore.inference.hf import hf_generate

    ids = prompts(pair.key, batch, P, dev, tokenizer)
    calls = {"hf dynamic": lambda n: hf_generate(pair.hf, ids, max_new_tokens=n),
             "hf static": lambda n: hf_generate(pair.hf, ids, max_new_tokens=n, cache_implementation="static")}
    kinds = []
    for kind in CACHE_KINDS:
        why = cache_missing(kind)
        if why:
            yield _note(ctx, f"mlcore {kind}", {"task": "decode", **params, "cache": kind}, pair.dtype, why)
            continue
        kinds.append(kind)
        calls[f"mlcore {kind}"] = lambda n, kind=kind: generate(pair.mlcore, ids, max_new_tokens=n, cache=kind)
    with torch.no_grad():
        outputs = {name: call(N) for name, call in calls.items()}  # the tokens, and a warm-up of each path
    reference = outputs["hf dynamic"]
    ceiling = ceilings[pair.dtype]
    fns = ceiling.fns()  # the roofline's GEMV candidates, timed in the same rounds
    for name, call in calls.items():
        fns[f"{name}|full"] = lambda call=call: call(N)
        fns[f"{name}|first"] = lambda call=call: call(1)
    per = interleaved(fns, device=dev, rounds=s.rounds, warm=False)  # warmed up above
    ceiling_gbs, ceiling_name = ceiling.per_round(per)
    rounds = {name: [a - b for a, b in zip(per[f"{name}|full"], per[f"{name}|first"])] for name in calls}
    decode = {name: paired_difference(per[f"{name}|full"], per[f"{name}|first"]) for name in calls}
    first = {name: to_timing(per[f"{name}|first"]) for name in calls}

    step_bytes = roofline_bytes(pair.mlcore, batch, mean_decode_context(P, N))
    hf_step = decode["hf dynamic"].median / (N - 1)
    hf_frac, gemv = paired_roofline(step_bytes, [r / (N - 1) for r in rounds["hf dynamic"]], ceiling_gbs)
    for kind in kinds:
        name = f"mlcore {kind}"
        diff = first_difference(outputs[name], reference)
        valid = diff is None
        t = decode[name]
        step = t.median / (N - 1)
        # per round, the twin's decode time over mlcore's, both measured seconds apart: robust to load drift
        paired = statistics.median(h / max(m, 1e-9) for h, m in zip(rounds["hf dynamic"], rounds[name]))
        extra = {
            "tpot_ms": round(step * 1e3, 3),
            "twin_tpot_ms": round(hf_step * 1e3, 3),
            "speedup_vs_hf_static": round(decode["hf static"].median / t.median, 3),
            "frac_roofline": round(paired_roofline(step_bytes, [r / (N - 1) for r in rounds[name]],
                                                   ceiling_gbs)[0], 3),
            "twin_frac_roofline": round(hf_frac, 3),
            "roofline_bytes_per_step": int(step_bytes),
            "gemv_gbs": round(gemv, 2),
            "gemv_kernel": ceiling_name,
            "valid": valid,
            "first_diff_column": diff,
            "paired_speedup": round(paired, 3),
            "speedup_valid": round(paired, 4) if valid else None,
            "hf_static_equals_dynamic": first_difference(outputs["hf static"], reference) is None,
            "prefill_tok_s": round(batch * P / first[name].median, 1),
        }
        yield Result.from_timing(
            "decode", name, {"task": "decode", **params, "cache": kind}, device=dev, dtype=pair.dtype,
            timing=t, twin=TWIN, twin_timing=decode["hf dynamic"], work=batch * (N - 1), unit="tokens/s",
            extra=extra, goal=_goals(ctx, pair.key, pair.dtype, kind, batch))
    if "static" in kinds:
        yield Result.from_timing(
            "decode", "mlcore prefill", {"task": "prefill", **params, "cache": "static"}, device=dev,
            dtype=pair.dtype, timing=first["mlcore static"], twin=TWIN, twin_timing=first["hf dynamic"],
            work=batch * P, unit="tokens/s")


def _no_cache_curve(ctx: Context, s: Settings) -> Iterator[Result]:
    """Seconds per generated token at context T: the whole prefix again (no cache) vs one cached step."""
    from mlcore.inference import StaticCache, generate_no_cache

    dtype = "bfloat16" if ctx.device.type == "cuda" else "float32"
    model = build_models("llama-25M")[0].to(device=ctx.device, dtype=torch.bfloat16 if dtype == "bfloat16"
                                             else torch.float32)
    ids = prompts("llama-25M", 1, max(s.contexts), ctx.device)
    for T in s.contexts:
        kv = StaticCache.for_model(model, 1, T)
        tok, pos = ids[:, T - 1: T], torch.tensor([[T - 1]], device=ctx.device)
        with torch.no_grad():
            model(ids[:, : T - 1], cache=kv, logits_to_keep=1)

        def cached(kv=kv, tok=tok, pos=pos, T=T):
            kv.crop(T - 1)  # forget the token of the previous call: every call is the step at context T
            with torch.no_grad():
                return model(tok, cache=kv, position_ids=pos, logits_to_keep=1, validate=False)

        per = interleaved({"no cache": lambda T=T: generate_no_cache(model, ids[:, :T], max_new_tokens=1),
                           "static": cached}, device=ctx.device, rounds=s.rounds)
        times = {k: to_timing(v) for k, v in per.items()}
        for impl, label in (("no cache", "no cache (generate_no_cache)"), ("static", "StaticCache decode step")):
            yield Result.from_timing(
                "decode", label, {"task": "context", "model": "llama-25M", "context": T, "impl": impl},
                device=ctx.device, dtype=dtype, timing=times[impl],
                extra={"vs_cached": round(times[impl].median / times["static"].median, 2)})


def _speculative(ctx: Context, s: Settings) -> Iterator[Result]:
    """The trained target with its trained draft: mlcore speculative_generate vs HF assisted generation."""
    from mlcore.inference import generate

    base = {"task": "speculative", "model": "tiny-4M", "prompt": s.prompt, "new": s.new}
    why = missing("speculative", "speculative_generate") or missing("hf", "hf_assisted_generate")
    if why:
        yield _note(ctx, "mlcore speculative", {**base, "k": s.draft_ks[0]}, None, why)
        return
    from mlcore.inference.hf import hf_assisted_generate, hf_generate
    from mlcore.inference.speculative import speculative_generate

    dtype = "bfloat16" if ctx.device.type == "cuda" else "float32"
    target_base, tokenizer = build_models("tiny-4M")
    target = make_pair("tiny-4M", dtype, ctx.device, target_base)
    draft = make_pair("tiny-draft", dtype, ctx.device)
    ids = prompts("tiny-4M", 1, s.prompt, ctx.device, tokenizer)
    N = s.new
    with torch.no_grad():
        alone = generate(target.mlcore, ids, max_new_tokens=N, cache="static")
        hf_alone = hf_generate(target.hf, ids, max_new_tokens=N)
    for k in s.draft_ks:
        with torch.no_grad():
            out, stats = speculative_generate(target.mlcore, draft.mlcore, ids, max_new_tokens=N,
                                              num_draft_tokens=k, cache="static", return_stats=True)
            hf_out = hf_assisted_generate(target.hf, draft.hf, ids, max_new_tokens=N, num_draft_tokens=k)
        per = interleaved({
            "spec": lambda k=k: speculative_generate(target.mlcore, draft.mlcore, ids, max_new_tokens=N,
                                                     num_draft_tokens=k, cache="static"),
            "alone": lambda: generate(target.mlcore, ids, max_new_tokens=N, cache="static"),
            "hf assisted": lambda k=k: hf_assisted_generate(target.hf, draft.hf, ids, max_new_tokens=N,
                                                            num_draft_tokens=k),
            "hf alone": lambda: hf_generate(target.hf, ids, max_new_tokens=N),
        }, device=ctx.device, rounds=s.rounds)
        t = {name: to_timing(v) for name, v in per.items()}
        valid = first_difference(out, alone) is None
        extra = {"acceptance": round(stats.rate, 3), "tokens_per_round": round(stats.tokens_per_round, 2),
                 "speedup_vs_target": round(t["alone"].median / t["spec"].median, 3),
                 "hf_speedup_vs_hf_target": round(t["hf alone"].median / t["hf assisted"].median, 3),
                 "valid": valid, "equals_target_greedy": valid,
                 "hf_assisted_equals_hf_greedy": first_difference(hf_out, hf_alone) is None}
        yield Result.from_timing("decode", f"mlcore speculative k={k}", {**base, "k": k}, device=ctx.device,
                                 dtype=dtype, timing=t["spec"], twin="transformers assisted generation",
                                 twin_timing=t["hf assisted"], work=N, unit="tokens/s", extra=extra)


def _memory(ctx: Context, s: Settings) -> Iterator[Result]:
    """Bytes each cache holds after T tokens (chunked prefill through one cache per kind), vs transformers."""
    from mlcore.inference import make_cache
    from mlcore.model import accounting

    model = build_models("llama-25M")[0].to(ctx.device)
    c, mib = model.config, 2**20
    ids = prompts("llama-25M", 1, max(s.memory_lens), ctx.device)
    options = {"sliding": {"window": 124, "sinks": 4}, "paged": {"block_size": 16}}
    held: dict[str, dict[int, int]] = {}
    for kind in CACHE_KINDS:
        if cache_missing(kind):
            continue
        kv = make_cache(kind, model, batch=1, max_len=c.max_seq_len, device=ctx.device, **options.get(kind, {}))
        held[kind], done = {}, 0
        for T in s.memory_lens:
            with torch.no_grad():
                model(ids[:, done:T], cache=kv, logits_to_keep=1)
            done = T
            nbytes = kv.nbytes()
            if kind == "paged":  # the pool is shared by every sequence: count the blocks this one holds
                nbytes = nbytes * (kv.num_blocks - kv.free_blocks) // kv.num_blocks
            held[kind][T] = nbytes
    hf = model.to_hf().eval()
    for T in s.memory_lens:
        with torch.no_grad():
            out = hf(ids[:, :T], use_cache=True)
            twin = hf_cache_bytes(out["cache"] if "cache" in out else out["past_key_values"])  # renamed in 5.x
        formula = accounting.kv_cache_bytes(c, 1, T, torch.float32)
        for kind, sizes in held.items():
            yield Result("decode", f"mlcore {kind}", {"task": "memory", "seq_len": T, "cache": kind},
                         str(ctx.device), "float32", sizes[T] / mib, 0.0, unit="MiB",
                         twin="transformers DynamicCache", twin_median=twin / mib,
                         extra={"formula_mib": round(formula / mib, 3), "options": options.get(kind)})
        yield Result("decode", "formula 2·L·Hkv·T·D·4 B", {"task": "memory", "seq_len": T, "cache": "formula"},
                     str(ctx.device), "float32", formula / mib, 0.0, unit="MiB")


def _gemv_ceilings(ctx: Context, dtypes: tuple[str, ...], models: list[torch.nn.Module]) -> dict[str, GemvCeiling]:
    """The probe's batch-1 GEMV candidates per dtype, kept: every decode row times all of them in its own rounds,
    at this topic's thread count (see ``GemvCeiling``).

    Their weight is as large as the largest model's decode-step weights in that dtype (at least the probe's
    4096 x 4096), not the probe's 4x-last-level-cache buffer: the ceiling then reads from where the step reads.
    On a CPU whose last-level cache holds the whole model (480 MiB of L3 on one of this project's machines) a
    DRAM-sized ceiling would be slower than the step it bounds, and nine candidates of 4 x 480 MiB would not
    fit in memory; where the model exceeds the cache, both stream from DRAM as before."""
    elements = max(weight_bytes(m) // next(m.parameters()).element_size() for m in models)
    return {name: GemvCeiling(list(gemv_kernels(ctx.device, DTYPES[name], elements * DTYPES[name].itemsize)))
            for name in dtypes}


def run(ctx: Context) -> Iterator[Result]:
    s = _settings(ctx)
    threads = torch.get_num_threads()
    if ctx.device.type == "cpu":
        torch.set_num_threads(CPU_THREADS)
    try:
        bases = {key: build_models(key) for key in s.models}
        gemv = _gemv_ceilings(ctx, s.dtypes, [base for base, _ in bases.values()])
        for key in s.models:
            base, tokenizer = bases.pop(key)
            for dtype in s.dtypes:
                pair = make_pair(key, dtype, ctx.device, base)
                for batch in s.batches:
                    yield from _headline(ctx, s, pair, tokenizer, batch, gemv)
                if key in s.compiled:  # the rows of the roofline goals: at least 5 rounds (a compiled round is cheap)
                    yield from compiled_rows(ctx, pair, tokenizer, 1, prompt=s.prompt, new=s.new,
                                             rounds=max(s.rounds, 5), ceiling=gemv[dtype])
                del pair
        yield from _no_cache_curve(ctx, s)
        yield from _speculative(ctx, s)
        yield from _memory(ctx, s)
    finally:
        torch.set_num_threads(threads)

