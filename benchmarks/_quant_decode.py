"""Decode speed of quantized models (section 2 of ``benchmarks/quant.py``) and where an int8 decode step spends
its time (section 5).

Decode: greedy ``mlcore.inference.generate`` (static cache, batch 1) of the ~27M Llama config with seeded weights
and of the trained tiny target, fp32 / bf16 / int8 / int4 / NF4 + DQ, against transformers' ``generate`` on the
same weights (bitsandbytes through ``BitsAndBytesConfig`` for the 8-bit and NF4 rows).

Profile: ``python -m benchmarks.quant --profile-int8`` runs :func:`profile_int8` in a process of its own with one
thread (``torch.set_num_threads`` there, never in the suite's process) and prints a JSON summary.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from benchmarks import _quant_helpers as qh
from benchmarks._decode_setup import paired_difference
from mlcore.bench import Context, Goal, Result, Timing
from mlcore.inference import generate
from mlcore.model import Transformer, TransformerConfig
from mlcore.quant import quantize_model
from mlcore.quant.calibration import find_linears
from mlcore.quant.hf import quantize_like_bnb

LLAMA_27M = dict(vocab_size=4096, d_model=512, n_layers=8, n_heads=8, n_kv_heads=2, max_seq_len=512)


def llama_27m(seed: int = 0) -> Transformer:
    """The ~27M Llama config of the issue, weights drawn from ``seed`` (the global RNG is restored after)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Transformer(TransformerConfig(**LLAMA_27M)).eval()


def _variants(base: nn.Module, full: bool) -> dict[str, Callable[[], nn.Module]]:
    """weights label -> builder of the model to decode with (quantized copies run bf16 activations)."""
    g = qh.divisible_group([m.in_features for m in find_linears(base).values()])
    out: dict[str, Callable[[], nn.Module]] = {
        "fp32": lambda: base,
        "bf16": lambda: copy.deepcopy(base).to(torch.bfloat16),
        "int8": lambda: quantize_model(copy.deepcopy(base), "int8").to(qh.ACT),
        f"int4 g{g}": lambda: quantize_model(copy.deepcopy(base), "int4", group_size=g).to(qh.ACT),
        "nf4+dq": lambda: quantize_model(copy.deepcopy(base), "nf4").to(qh.ACT),
    }
    if full:
        out["int8, fp32 activations"] = lambda: quantize_model(copy.deepcopy(base), "int8")
        # fp32 model: Int8MixedLinear casts activations to fp16 itself (and .to(bf16) would round its absmax)
        out["LLM.int8 (mlcore)"] = lambda: quantize_like_bnb(copy.deepcopy(base), "llm_int8")
    return out


def _hf_twins(folder: Path, dev: torch.device, full: bool) -> dict[str, tuple[str, Callable[[], nn.Module]]]:
    """weights label -> (twin description, loader) for transformers on the HF folder ``folder`` (the bf16 twin
    in the full preset only); the bitsandbytes twins load through ``mlcore.quant.hf.load_bnb``."""
    from transformers import AutoModelForCausalLM

    from mlcore.quant.hf import load_bnb

    def quiet_load(fn: Callable[[], nn.Module]) -> nn.Module:
        from transformers.utils import logging as hf_logging

        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a "Loading weights" bar per load would break the suite's own bar
        try:
            return fn().eval()
        finally:
            if bar:
                hf_logging.enable_progress_bar()

    def dense(dtype: torch.dtype) -> Callable[[], nn.Module]:
        return lambda: quiet_load(lambda: AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(dev))

    twins = {"fp32": ("HF fp32", dense(torch.float32))}
    if full:
        twins["bf16"] = ("HF bf16", dense(torch.bfloat16))
    if qh.bitsandbytes_or_none() is not None:
        twins["int8"] = ("HF + bnb 8-bit (LLM.int8)", lambda: quiet_load(
            lambda: load_bnb(folder, "llm_int8", dtype=qh.ACT, device=str(dev))))
        twins["LLM.int8 (mlcore)"] = ("HF + bnb 8-bit (LLM.int8)", lambda: quiet_load(
            lambda: load_bnb(folder, "llm_int8", dtype=torch.float32, device=str(dev))))
        twins["nf4+dq"] = ("HF + bnb NF4+DQ", lambda: quiet_load(
            lambda: load_bnb(folder, "nf4", double_quant=True, dtype=qh.ACT, device=str(dev))))
    return twins


def _activation_dtype(model: nn.Module) -> torch.dtype:
    """The dtype an mlcore Transformer computes in: that of its (never quantized) token embedding."""
    return model.embed.weight.dtype


def _decode_timing(run: Callable[..., None], runs: int, device: torch.device) -> Timing:
    """Seconds of the decode steps alone: per round t(generate n) - t(generate 1), prefill and the first
    token cancelling out (the two calls back to back, so they see the same machine load)."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    full, first = [], []
    for _ in range(runs):
        sync()
        start = time.perf_counter()
        run(1)
        sync()
        middle = time.perf_counter()
        run()
        sync()
        full.append(time.perf_counter() - middle)
        first.append(middle - start)
    return paired_difference(full, first)


def _decode_variant(ctx: Context, label: str, weights: str, model: nn.Module, twin: tuple | None,
                    prompt: torch.Tensor, fp32_rate: float | None, goal: bool, compiled: bool = False) -> Result:
    """Time mlcore's greedy decode of ``model`` (and the transformers twin, when given) on ``prompt``;
    ``compiled``: through ``generate(compile=True)`` (the first call compiles, outside the timing)."""
    from mlcore.inference.hf import hf_generate

    n_new, runs = (16, 3) if ctx.quick else (64, 5)
    out: dict[str, torch.Tensor] = {}

    def run_mlcore(n: int = n_new) -> None:
        out["mlcore"] = generate(model, prompt, max_new_tokens=n, cache="static", compile=compiled)

    run_mlcore(2)  # warm-up: lazy initialisation (the int4 kernel's repacked weight), allocator, caches
    if compiled:
        run_mlcore()  # and the graph of the timed length's cache bucket, compiled outside the timing
    t = _decode_timing(run_mlcore, runs, ctx.device)
    twin_name, twin_t = None, None
    if twin is not None:
        twin_name, hf = twin[0], twin[1]()

        def run_hf(n: int = n_new) -> None:
            out["hf"] = hf_generate(hf, prompt, max_new_tokens=n, cache_implementation="static")

        run_hf(2)
        twin_t = _decode_timing(run_hf, runs, ctx.device)
    rate = (n_new - 1) / t.median
    agree = None
    if "hf" in out:
        agree = round(float((out["hf"][0, -n_new:] == out["mlcore"][0, -n_new:]).float().mean()), 3)
    row_dots = compiled and ctx.device.type == "cpu" and prompt.shape[0] == 1
    extra = {"kernel": qh.kernel_summary(model, compiled_single_row=row_dots),
             "speedup_vs_fp32": round(rate / (fp32_rate or rate), 3), "vs": twin_name, "agree": agree, "weights_mb": round(qh.tensor_bytes(model) / 1e6, 2)}
    g = None
    if goal and weights == "int8" and ctx.device.type == "cpu" and compiled:
        # the goal compares like with like: both compiled (the eager pair is reported beside it)
        g = Goal(">=", 2.5, "int8 weight-only decode / mlcore fp32 decode, both compiled (27M config, batch 1, "
                 "CPU)", metric="speedup_vs_fp32")
    return Result.from_timing(
        "quant", "mlcore generate" + (", compiled" if compiled else ""),
        {"task": "decode", "model": label, "weights": weights, "path": "compiled" if compiled else "eager",
         "new_tokens": n_new, "prompt": prompt.shape[1]},
        device=ctx.device, dtype=str(_activation_dtype(model)).removeprefix("torch."), timing=t,
        twin=f"transformers generate ({twin_name})" if twin_name else None, twin_timing=twin_t,
        work=n_new - 1, unit="tokens/s", extra=extra, goal=g)


def _decode_model(ctx: Context, label: str, base: nn.Module, folder: Path, prompt: torch.Tensor,
                  goal: bool) -> Iterator[Result]:
    twins = _hf_twins(folder, ctx.device, not ctx.quick)
    fp32_rate = None
    for weights, build in _variants(base, not ctx.quick).items():
        with qh.quiet():
            model = build().to(ctx.device)
            result = _decode_variant(ctx, label, weights, model, twins.get(weights), prompt.to(ctx.device),
                                     fp32_rate, goal)
        fp32_rate = result.median if weights == "fp32" else fp32_rate
        del model
        yield result
    if goal:  # the 27M config: the same weights through one compiled decode step (no transformers twin)
        yield from _compiled_rows(ctx, label, base, prompt)


def _compiled_rows(ctx: Context, label: str, base: nn.Module, prompt: torch.Tensor) -> Iterator[Result]:
    """fp32, int8 and int4 (bf16 activations) decoding through ``generate(compile=True)``: with per-step
    overhead gone, what is left is closer to the kernels' own speed (compiling takes 15-60 s each here)."""
    fp32_rate = None
    for weights, build in _variants(base, False).items():
        if weights not in ("fp32", "int8") and not weights.startswith("int4"):
            continue
        with qh.quiet():
            model = build().to(ctx.device)
            result = _decode_variant(ctx, label, weights, model, None, prompt.to(ctx.device), fp32_rate, True,
                                     compiled=True)
        fp32_rate = result.median if weights == "fp32" else fp32_rate
        del model
        yield result


def decode(ctx: Context) -> Iterator[Result]:
    from mlcore.training import load_tiny, tiny_dir
    from mlcore.training.assets import tiny_heldout_text

    with tempfile.TemporaryDirectory() as tmp:
        big = llama_27m()
        big.save_pretrained(tmp)  # the same weights for transformers
        prompt = torch.randint(0, LLAMA_27M["vocab_size"], (1, 16), generator=torch.Generator().manual_seed(2))
        yield from _decode_model(ctx, "llama-27M", big, Path(tmp), prompt, goal=True)
        del big
    target, tok = load_tiny("target")
    prompt = torch.tensor([tok.encode_ordinary(tiny_heldout_text()[:400])[:16]])  # text the model never saw
    yield from _decode_model(ctx, "tiny-target", target, tiny_dir() / "target", prompt, goal=False)


def profile_int8(steps: int = 10) -> dict:
    """One thread: time ``steps`` int8 decode steps of the 27M config, then profile one more.

    Returns ``{"wall_s": median unprofiled step, "profiled_s": the profiled step, "kernel": ..., "rows": where the
    profiled step went (see ``summarize_profile``)}``. Sets the thread count: call it only in a process of its own.
    """
    import time

    from torch.profiler import ProfilerActivity, profile

    from mlcore.inference import make_cache

    torch.set_num_threads(1)  # a script of its own: the suite's process is never touched
    with qh.quiet():
        model = quantize_model(llama_27m(), "int8").to(qh.ACT)
    prompt = torch.randint(0, LLAMA_27M["vocab_size"], (1, 16), generator=torch.Generator().manual_seed(2))
    cache = make_cache("static", model, batch=1, max_len=16 + steps + 8, device=torch.device("cpu"))
    with torch.no_grad():
        model(prompt, cache=cache, logits_to_keep=1)
        token, pos = prompt[:, -1:], torch.tensor([[16]])

        def step(i: int) -> None:
            model(token, cache=cache, position_ids=pos + i, logits_to_keep=1, validate=False)

        walls = []
        for i in range(steps):
            start = time.perf_counter()
            step(i)
            walls.append(time.perf_counter() - start)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            step(steps)
            profiled = time.perf_counter() - start
    ops = [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in prof.key_averages()]
    return {"wall_s": sorted(walls)[len(walls) // 2], "profiled_s": profiled, "kernel": qh.kernel_summary(model),
            "rows": qh.summarize_profile(ops, profiled)}


def profile(ctx: Context) -> Iterator[Result]:
    if ctx.device.type != "cpu":
        return
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "benchmarks.quant", "--profile-int8"], cwd=root,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"the int8 profile script failed: {proc.stderr[-2000:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    yield Result("quant", "decode step", {"task": "profile", "op": "whole step, unprofiled (median of 10)"}, "cpu",
                 "bfloat16", round(data["wall_s"] * 1e3, 3), 0.0, unit="ms", extra={"kernel": data["kernel"]})
    wall = data["profiled_s"]
    yield Result("quant", "decode step", {"task": "profile", "op": "whole step, under the profiler"}, "cpu",
                 "bfloat16", round(wall * 1e3, 3), 0.0, unit="ms", extra={"share": 1.0})
    for name, seconds, calls in data["rows"]:
        yield Result("quant", "op", {"task": "profile", "op": name}, "cpu", "bfloat16", round(seconds * 1e3, 3),
                     0.0, unit="ms", extra={"calls": calls, "share": round(seconds / wall, 3)})
