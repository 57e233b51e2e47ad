"""Quality of quantized weights (section 3 of ``benchmarks/quant.py``): held-out perplexity of the trained tiny
target per scheme, its mean KL divergence from the fp32 model's next-token distribution, the relative weight
reconstruction error and the bits per linear weight.

Perplexity goes through ``mlcore.training.evaluate`` on the blocks ``pretrain`` evaluated (the first 8 of 28 in
the quick preset); GPTQ and AWQ calibrate on blocks of training topics (AWQ's grid has 10 points in quick, 20 in
full). ``quantize_s`` is the time a scheme took to quantize the model (calibration included). ``gap_vs_rtn`` = |ppl - fp32| /
|ppl(RTN at the same group size) - fp32|: below 1, the method is closer to fp32 than round-to-nearest.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

from benchmarks import _quant_helpers as qh
from mlcore.bench import Context, Goal, Result
from mlcore.quant import quantize_model
from mlcore.quant.awq import awq_apply_scales, transformer_awq_mapping
from mlcore.quant.calibration import find_linears
from mlcore.quant.gptq import gptq_quantize_model
from mlcore.quant.hf import quantize_like_bnb


def _awq(calib: list[torch.Tensor], g: int, n_grid: int) -> Callable:
    """AWQ int4 with groups of ``g``: scales searched and folded only for the pairs whose linears' widths ``g``
    divides (``awq_apply_scales`` would fail on the others; ``quantize_model`` then keeps those layers float)."""
    def fn(m: nn.Module):
        mapping, ties = transformer_awq_mapping(m)
        mapping = {prev: names for prev, names in mapping.items()
                   if all(m.get_submodule(n).in_features % g == 0 for n in names)}
        searches = awq_apply_scales(m, calib, group_size=g, n_grid=n_grid, mapping=mapping, ties=ties)
        return quantize_model(m, "int4", group_size=g), qh.awq_fold_factors(mapping, ties, searches)
    return fn


def _schemes(calib: list[torch.Tensor], full: bool) -> dict[str, tuple[str, Callable]]:
    """scheme label -> (RTN baseline label for gap_vs_rtn or "", fn(model) -> (model, AWQ folds or None))."""
    def plain(scheme: str, **kw) -> Callable:
        return lambda m: (quantize_model(m, scheme, **kw), None)

    def gptq(g: int, act_order: bool = False) -> Callable:
        return lambda m: (gptq_quantize_model(m, calib, group_size=g, act_order=act_order), None)

    out = {"RTN int8": ("", plain("int8"))}
    for g in (128, 64):
        out[f"RTN int4 g{g}"] = ("", plain("int4", group_size=g))
    out["NF4"] = ("", plain("nf4", double_quant=False))
    out["NF4+DQ"] = ("", plain("nf4", double_quant=True))
    for g in (128, 64) if full else (64,):  # calibrated schemes cost seconds each: quick keeps g64 (every layer)
        out[f"GPTQ int4 g{g}"] = (f"RTN int4 g{g}", gptq(g))
        out[f"AWQ int4 g{g}"] = (f"RTN int4 g{g}", _awq(calib, g, n_grid=20 if full else 10))
    if full:
        out["GPTQ int4 g64 act-order"] = ("RTN int4 g64", gptq(64, act_order=True))
        out["LLM.int8 (threshold 6)"] = ("", lambda m: (quantize_like_bnb(m, "llm_int8"), None))
    return out


def _bnb_nf4_model(model: nn.Module, names: list[str], double_quant: bool) -> nn.Module | None:
    """A copy of ``model`` whose linears ``names`` hold bitsandbytes' NF4 round trip of their weights."""
    bnb = qh.bitsandbytes_or_none()
    if bnb is None:
        return None
    m = copy.deepcopy(model)
    with torch.no_grad(), torch._dynamo.config.patch(disable=True):  # bnb compiles its CPU fallback
        for name in names:
            w = m.get_submodule(name).weight
            packed, state = bnb.functional.quantize_4bit(w.data, blocksize=64, quant_type="nf4",
                                                         compress_statistics=double_quant)
            w.copy_(bnb.functional.dequantize_4bit(packed, state))
    return m


class _Scorer:
    """Perplexity through ``mlcore.training.evaluate`` and, in the same forward passes, the mean per-token
    KL(p_fp32 || p_model) against the fp32 model's log-probabilities (recorded by the first call)."""

    def __init__(self, held: torch.Tensor, batch_size: int = 8) -> None:
        self.data, self.batch_size = {"input_ids": held}, batch_size
        self.reference: list[torch.Tensor] = []

    def __call__(self, model: nn.Module) -> tuple[float, float]:
        from mlcore.training import evaluate
        from mlcore.training.loop import default_forward

        record = not self.reference
        kl, count, step = 0.0, 0, 0

        def forward(m: nn.Module, batch: dict) -> torch.Tensor:
            nonlocal kl, count, step
            logits = default_forward(m, batch)
            logp = logits.float().log_softmax(-1)
            if record:
                self.reference.append(logp)
            else:
                ref = self.reference[step]
                kl += float((ref.exp() * (ref - logp)).sum())
                count += ref.shape[0] * ref.shape[1]
            step += 1
            return logits

        with torch.no_grad():
            ppl = evaluate(model, self.data, batch_size=self.batch_size, forward=forward)["perplexity"]
        return ppl, (kl / count if count else 0.0)


def quality(ctx: Context) -> Iterator[Result]:
    from mlcore.training import load_tiny
    from mlcore.training.assets import tiny_train_log

    log = tiny_train_log()
    base, tok = load_tiny("target")
    base = base.to(ctx.device)
    held = qh.heldout_blocks(tok, log)[: 8 if ctx.quick else None].to(ctx.device)
    calib = list(qh.calibration_blocks(tok, log, 4 if ctx.quick else 32).to(ctx.device).split(4))
    names = list(find_linears(base))
    original = qh.linear_weights(base, names)
    score = _Scorer(held)
    fp32, _ = score(base)
    yield Result("quant", "fp32 (reference)", {"task": "quality", "scheme": "fp32"}, str(ctx.device), "float32",
                 fp32, 0.0, unit="ppl", extra={"ppl_vs_fp32": 1.0, "kl_vs_fp32": 0.0, "weight_error": 0.0,
                                               "bits_per_param": 32.0, "blocks": len(held),
                                               "logged_ppl_28_blocks": round(log["target"]["heldout_perplexity"], 2)})
    measured: dict[str, float] = {}
    for scheme, (baseline, fn) in _schemes(calib, not ctx.quick).items():
        with qh.quiet():
            start = time.perf_counter()
            model, folds = fn(copy.deepcopy(base))
            seconds = time.perf_counter() - start
            value, kl = score(model)
            twin = None
            if scheme in ("NF4", "NF4+DQ"):
                ref = _bnb_nf4_model(base, names, scheme == "NF4+DQ")
                twin = None if ref is None else score(ref)[0]
        measured[scheme] = value
        gap = None
        if baseline in measured and measured[baseline] != fp32:
            gap = round(abs(value - fp32) / abs(measured[baseline] - fp32), 3)
        extra = {"ppl_vs_fp32": round(value / fp32, 4), "gap_vs_rtn": gap, "kl_vs_fp32": round(kl, 5),
                 "weight_error": round(qh.weight_error(original, model, folds), 5),
                 "bits_per_param": round(qh.linear_bits_per_parameter(model, names), 3),
                 "kernel": qh.kernel_summary(model), "quantize_s": round(seconds, 2)}
        goal = None
        if scheme in ("GPTQ int4 g128", "GPTQ int4 g64"):
            goal = Goal("<", 1.0, f"|{scheme} - fp32| / |{baseline} - fp32| held-out perplexity",
                        metric="gap_vs_rtn")
        yield Result("quant", scheme, {"task": "quality", "scheme": scheme}, str(ctx.device), "float32", value, 0.0,
                     unit="ppl", better="lower", extra=extra, goal=goal,
                     twin="bitsandbytes quantize_4bit weights" if twin is not None else None, twin_median=twin)
