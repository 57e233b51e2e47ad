"""Quantization: matmul kernels, decode speed, quality and memory of ``mlcore.quant`` against torch's kernels,
bitsandbytes and transformers + bitsandbytes on the same weights.

1. **matmul** ``x (M, K) @ W^T`` for one square weight (4096, quick 2048) at M = 1 token (GEMV, bound by the
   bytes of weight read) and M = 16: fp32 and bf16 (``F.linear``), int8 (per-channel absmax), int4 (groups of
   128) and NF4 + double quant, each as mlcore's ``QuantizedLinear`` (its ``.kernel`` named), torch's raw
   weight-only kernels (``aten._weight_int8pack_mm``, ``aten._weight_int4pack_mm_for_cpu``) and bitsandbytes
   (``Linear8bitLt`` with threshold 0, ``Linear4bit``). Quantized paths take bf16 activations (the fast case of
   torch's CPU kernels). ``gbs`` = stored weight bytes (codes and scales) / time; ``frac_gemv`` = that over the
   probe's GEMV ceiling (the activation dtype's for fp32 / bf16, the best one for packed formats).
   Twin of mlcore's row: bitsandbytes where it has the format, torch's raw kernel for int4.
2. **decode** tokens/s of greedy ``mlcore.inference.generate`` (static cache, batch 1, a 16-token prompt, 16 new
   tokens in quick, 64 in full; the rate is of the decode steps alone, t(generate n) - t(generate 1) per
   round, so prefill and the first token cancel out) for the ~27M Llama config with seeded
   weights and for the trained tiny target: fp32, bf16, int8 weight-only, int4 (largest of 128 / 64 dividing
   every layer), NF4 + double quant (quantized models run bf16 activations; full adds int8 with fp32
   activations and mlcore's LLM.int8()). Twin: ``transformers`` ``generate`` on the same weights (fp32, bf16
   in full, and bitsandbytes 8-bit = LLM.int8() and NF4 + double quant through ``BitsAndBytesConfig``);
   ``agree`` = share of new tokens equal to the twin's. ``speedup_vs_fp32`` compares with mlcore's own fp32
   decode; ``weights_mb`` = bytes of all parameters and buffers after decoding (caches such as the int4
   kernel's repacked weight included). The 27M config is also decoded through ``generate(compile=True)``
   (``path`` = compiled: one ``torch.compile`` graph per decode step, compiled before the timing) in fp32,
   int8 and int4, where ``speedup_vs_fp32`` compares with the compiled fp32 row.
3. **quality** of the trained target: held-out perplexity (``mlcore.training.evaluate`` on the blocks
   ``pretrain`` evaluates; 8 of 28 in quick) per scheme, RTN int8 / int4 g128 and g64 (``d_ff`` 704 is not a
   multiple of 128: ``down_proj`` stays fp32 at g128) / NF4 / NF4 + DQ / GPTQ and AWQ g64 (+ g128, act-order
   GPTQ and LLM.int8() in full), calibrated on training blocks (4 in quick, 32 in full), with the mean per-token
   KL divergence from the fp32 model's next-token distribution (``kl_vs_fp32``, far more sensitive than
   perplexity for this small, noise-tolerant model), the relative weight reconstruction error (AWQ's folded
   scales undone) and bits per linear weight. NF4's twin is the same model with bitsandbytes'
   ``quantize_4bit`` / ``dequantize_4bit`` weights.
4. **memory**: bits per parameter of each stored format (scales, zero points and second-level scales
   included) on the matmul weight, against bitsandbytes' and torch's own formats.
5. **profile**: one int8 decode step of the 27M config under ``torch.profiler`` with one thread, in a
   subprocess (``python -m benchmarks.quant --profile-int8``) so the suite's thread setting stays untouched:
   the top ops by self time, and the time outside any op (Python, module calls).

Goals (issue 10): int8 weight-only decode >= 2.5x mlcore's fp32 decode (CPU, batch 1, 27M config; checked on
the compiled pair, like against like; the eager pair's ratio is in the same table); NF4 with
double quant <= 4.13 bits per parameter; GPTQ int4 perplexity closer to fp32 than RTN int4 (``gap_vs_rtn`` =
|GPTQ - fp32| / |RTN - fp32| < 1, at each group size measured).

Sections 2, 3 and 5 live in ``_quant_decode.py`` and ``_quant_quality.py``, shared helpers in
``_quant_helpers.py`` (files starting with "_" are not topics of their own).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import _quant_helpers as qh
from benchmarks._quant_decode import decode, profile, profile_int8
from benchmarks._quant_quality import quality
from mlcore.bench import Context, Goal, Result, Table, Timing, time_fn
from mlcore.quant import QuantizedLinear, quantize
from mlcore.quant.kernels import int4pack_weight
from mlcore.quant.llm_int8 import Int8MixedLinear

DESCRIPTION = "int8 / int4 / NF4 matmul, decode, perplexity and bits per parameter vs torch, bitsandbytes, HF"
TABLES = [
    Table("matmul, 1 token (GEMV)", where={"task": "matmul", "M": 1}, params=("format",),
          columns=("kernel", "gbs", "frac_gemv", "vs_torch_kernel")),
    Table("matmul, 16 tokens", where={"task": "matmul", "M": 16}, params=("format",),
          columns=("kernel", "gbs", "frac_gemv", "vs_torch_kernel")),
    Table("decode, 27M Llama config (seeded weights)", where={"task": "decode", "model": "llama-27M"},
          params=("weights", "path"), columns=("kernel", "speedup_vs_fp32", "vs", "agree", "weights_mb")),
    Table("decode, trained tiny target", where={"task": "decode", "model": "tiny-target"},
          params=("weights",), columns=("kernel", "speedup_vs_fp32", "vs", "agree", "weights_mb")),
    Table("quality: held-out perplexity of the trained target", where={"task": "quality"},
          params=("scheme",),
          columns=("ppl_vs_fp32", "gap_vs_rtn", "kl_vs_fp32", "weight_error", "bits_per_param", "quantize_s")),
    Table("memory: bits per parameter (with scales)", where={"task": "memory"}, params=("format",),
          columns=("formula",)),
    Table("where time goes: one int8 decode step, 27M config, 1 thread", where={"task": "profile"},
          params=("op",), columns=("calls", "share")),
]


def _ceiling(ctx: Context, act: str, packed: bool) -> float | None:
    """The probe's GEMV bandwidth for activations ``act`` (the best of them for a packed weight), or None."""
    gemv = ctx.probe.gemv_gbs
    value = max(gemv.values(), default=0.0) if packed else gemv.get(act, 0.0)
    return value or None


def _matmul_impls(ctx: Context, w: torch.Tensor) -> list[dict]:
    """Every implementation of every format: dict(format, impl, fn(x), nbytes, act, kernel, packed)."""
    dev, cpu = ctx.device, ctx.device.type == "cpu"
    n_out, n_in = w.shape
    lin = nn.Linear(n_in, n_out, bias=False)
    lin.weight.data.copy_(w)
    wd = w.to(dev)
    impls = [dict(format="fp32", impl="torch F.linear", fn=lambda x: F.linear(x, wd), nbytes=wd.numel() * 4,
                  act=torch.float32, kernel="", packed=False)]
    wb = wd.to(torch.bfloat16)
    impls.append(dict(format="bf16", impl="torch F.linear", fn=lambda x: F.linear(x, wb), nbytes=wb.numel() * 2,
                      act=torch.bfloat16, kernel="", packed=False))
    q8, q4 = quantize(w, "int8"), quantize(w, "int4", group_size=128)
    nf4 = quantize(w, "nf4", blocksize=64, double_quant=True)
    for fmt, qt in (("int8", q8), ("int4 g128", q4), ("nf4+dq", nf4)):
        if cpu and fmt == "int8":
            s8 = q8.scales.reshape(-1).to(qh.ACT)
            impls.append(dict(format=fmt, impl="torch _weight_int8pack_mm", nbytes=q8.nbytes, act=qh.ACT,
                              fn=lambda x, s8=s8: torch.ops.aten._weight_int8pack_mm(x, q8.data, s8),
                              kernel="int8pack", packed=True))
        if cpu and fmt == "int4 g128":
            packed, sz = int4pack_weight(q4)
            szb = sz.to(qh.ACT)
            impls.append(dict(format=fmt, impl="torch _weight_int4pack_mm_for_cpu", act=qh.ACT, kernel="int4pack",
                              nbytes=packed.numel() * packed.element_size() + szb.numel() * 2, packed=True,
                              fn=lambda x, p=packed, s=szb: torch.ops.aten._weight_int4pack_mm_for_cpu(x, p, 128, s)))
        layer = QuantizedLinear(qt.to(dev)).to(qh.ACT)  # bf16 compute dtype: the fast kernels where they exist
        impls.append(dict(format=fmt, impl="mlcore QuantizedLinear", fn=layer, nbytes=qt.nbytes, act=qh.ACT,
                          kernel=layer.kernel_for(qh.ACT) if dev.type == "cpu" else "dequant", packed=True))
    bnb = qh.bitsandbytes_or_none()
    if bnb is not None:
        for fmt, make in (("int8", lambda: bnb.nn.Linear8bitLt(n_in, n_out, bias=False, has_fp16_weights=False,
                                                                threshold=0.0)),
                          ("nf4+dq", lambda: bnb.nn.Linear4bit(n_in, n_out, bias=False, quant_type="nf4",
                                                               compress_statistics=True, compute_dtype=qh.ACT))):
            ref = make()
            ref.load_state_dict(lin.state_dict())
            ref = ref.to(dev).eval()  # moving to the device quantizes
            if fmt == "int8":
                nbytes = ref.weight.numel() + ref.weight.SCB.numel() * 4
            else:
                nbytes = round(qh.bnb_4bit_bits(ref.weight.data, ref.weight.quant_state) * w.numel() / 8)
            impls.append(dict(format=fmt, impl=f"bitsandbytes {type(ref).__name__}", fn=ref, nbytes=nbytes,
                              act=qh.ACT, kernel="", packed=True))
    return impls


def _time(fn: Callable[[], object], ctx: Context) -> Timing:
    """``time_fn``; a call too slow for three runs in its budget (NF4's dequantize path) is timed 3 times."""
    t = time_fn(fn, device=ctx.device, min_run_time=0.1 if ctx.quick else 0.3)
    return t if t.runs >= 3 else qh.time_calls(fn, runs=3, warmup=0, device=ctx.device)


def _matmul(ctx: Context) -> Iterator[Result]:
    n = 2048 if ctx.quick else 4096
    w = torch.randn(n, n, generator=torch.Generator().manual_seed(0)) * 0.02
    with qh.quiet():
        impls = _matmul_impls(ctx, w)
    gen = torch.Generator().manual_seed(1)
    for M in (1, 16):
        x32 = torch.randn(M, n, generator=gen).to(ctx.device)
        timings = {}
        with qh.quiet(), torch.no_grad():
            for im in impls:
                x = x32.to(im["act"])
                timings[(im["format"], im["impl"])] = _time(lambda im=im, x=x: im["fn"](x), ctx)
        for im in impls:
            yield _matmul_result(ctx, im, timings, M, n)


def _matmul_result(ctx: Context, im: dict, timings: dict, M: int, n: int) -> Result:
    fmt, impl = im["format"], im["impl"]
    t = timings[(fmt, impl)]
    same = [k for k in timings if k[0] == fmt]
    torch_kernel = next((k for k in same if k[1].startswith("torch _")), None)
    twin = None
    if impl.startswith("mlcore"):
        twin = next((k for k in same if k[1].startswith("bitsandbytes")), torch_kernel)
    gbs = im["nbytes"] / t.median / 1e9
    ceiling = _ceiling(ctx, str(im["act"]).removeprefix("torch."), im["packed"])
    extra = {"kernel": im["kernel"], "gbs": round(gbs, 2), "frac_gemv": round(gbs / ceiling, 3) if ceiling else None,
             "weight_bytes": im["nbytes"],
             "vs_torch_kernel": (round(timings[torch_kernel].median / t.median, 3)
                                 if torch_kernel and impl.startswith("mlcore") else None)}
    return Result.from_timing(
        "quant", impl, {"task": "matmul", "format": fmt, "impl": impl, "M": M, "n": n},
        device=ctx.device, dtype=str(im["act"]).removeprefix("torch."), timing=t,
        twin=twin[1] if twin else None, twin_timing=timings[twin] if twin else None, extra=extra)


# ---------------------------------------------------------------------------------------------- 2. decode




def _memory(ctx: Context) -> Iterator[Result]:
    n = 2048 if ctx.quick else 4096
    w = torch.randn(n, n, generator=torch.Generator().manual_seed(0)) * 0.02
    with qh.quiet():
        rows = _memory_rows(w)
    for fmt, bits, formula, twin, twin_bits in rows:
        goal = Goal("<=", 4.13, "NF4 + double quant bits per parameter", metric="median") if fmt == "nf4+dq" else None
        yield Result("quant", "mlcore" if fmt not in ("fp32", "bf16") else "dense",
                     {"task": "memory", "format": fmt, "n": n}, str(ctx.device), None, round(bits, 4), 0.0,
                     unit="bits/param", better="lower", twin=twin if twin_bits is not None else None,
                     twin_median=twin_bits, extra={"formula": formula}, goal=goal)


def _memory_rows(w: torch.Tensor) -> list[tuple[str, float, str, str | None, float | None]]:
    """(format, mlcore bits/param, formula, twin, twin bits/param) for the weight ``w`` (n, n)."""
    n = w.shape[1]
    bnb = qh.bitsandbytes_or_none()
    rows: list[tuple[str, float, str, str | None, float | None]] = [
        ("fp32", 32.0, "32", None, None), ("bf16", 16.0, "16", None, None)]
    q8 = quantize(w, "int8")
    twin8 = None
    if bnb is not None:
        cb, scb, _ = bnb.functional.int8_vectorwise_quant(w.half())
        twin8 = 8.0 * (cb.numel() + scb.numel() * 4) / w.numel()
    rows.append(("int8 per channel", q8.bits_per_parameter, f"8 + 32/{n}", "bitsandbytes int8 (Int8Params)", twin8))
    for g in (128, 64, 32):
        q4 = quantize(w, "int4", group_size=g)
        packed, sz = int4pack_weight(q4)
        torch_bits = 8.0 * (packed.numel() * packed.element_size() + sz.numel() * 2) / w.numel()
        rows.append((f"int4 g{g}", q4.bits_per_parameter, f"4 + (32 + 8)/{g}", "torch int4pack + bf16 scales",
                     torch_bits))
    for dq in (False, True):
        qt = quantize(w, "nf4", blocksize=64, double_quant=dq)
        twin = None
        if bnb is not None:
            twin = qh.bnb_4bit_bits(*bnb.functional.quantize_4bit(w, blocksize=64, quant_type="nf4",
                                                                  compress_statistics=dq))
        rows.append(("nf4+dq" if dq else "nf4", qt.bits_per_parameter,
                     "4 + 8/64 + 32/(64*256)" if dq else "4 + 32/64", "bitsandbytes quantize_4bit", twin))
    lin = nn.Linear(n, w.shape[0], bias=False)
    lin.weight.data.copy_(w)
    nbytes, numel = qh.layer_weight_bytes(Int8MixedLinear.from_linear(lin))
    rows.append(("LLM.int8 (mlcore)", 8.0 * nbytes / numel, f"8 + 32/{n}", None, None))
    return rows


# ---------------------------------------------------------------------------------------------- 5. profile


def run(ctx: Context) -> Iterator[Result]:
    yield from _memory(ctx)
    yield from _matmul(ctx)
    yield from quality(ctx)
    yield from decode(ctx)
    yield from profile(ctx)


if __name__ == "__main__":
    if sys.argv[1:] == ["--profile-int8"]:
        print(json.dumps(profile_int8()))
    else:
        sys.exit("usage: python -m benchmarks.quant --profile-int8   (the suite runs this topic itself)")
