"""Differentially private training: what DP-SGD costs (step time, peak memory, against Opacus on the same model)
and what it buys (canary exposure against held-out perplexity, next to masking).

**Cost.** The project's trained tiny target (``load_tiny("target")``, 4M parameters), one optimizer step on one
batch of B sequences of T tokens, per-example mean next-token loss, AdamW:

- ``non-private``: ordinary backward + AdamW (the floor);
- ``mlcore DP``: ``mlcore.training.dp.DPGradient`` (vmap/grad per-example gradients, flat clipping to C = 1,
  Gaussian noise sigma = 1) + AdamW; twin ``Opacus DP``: ``GradSampleModule`` + ``DPOptimizer`` (same C, sigma,
  expected batch size, AdamW) on a copy of the same model;
- ``mlcore DP-LoRA`` / twin ``Opacus DP-LoRA``: the same after ``apply_lora`` (r = 8 on every linear layer).

The methods are timed one step each per round, interleaved (5 rounds quick, 15 full; median and IQR). Speed-up =
Opacus step time / mlcore step time (> 1: mlcore faster). Goal (issue 15): mlcore DP step time at most 1.2x
Opacus' (speed-up >= 1/1.2). Quick: B=8, T=64; full: B=32, T=128. Fixed-size batches here (timing only).

**Privacy-utility.** The tiny target is fine-tuned on lines of CPython's ``pydoc_data.topics`` with canaries "my
card number is 4556 7375 86.. ...C" (``mlcore.privacy.audit.card_space``, |R| = 1000, 100 in quick) planted
k = 4 and 16 times, at epsilon in {1, 3, 8, inf} (delta = 1e-5; Poisson sampling, noise from ``noise_multiplier_for``), full
DP-SGD and DP-LoRA, plus ``mask_pii`` applied to the data before ordinary (non-private) training. Exposure (bits,
exact rank over all of R, Carlini et al. 2019) against held-out perplexity (topics never used in pretraining).
Epsilon = inf is ordinary (non-private) training: full fine-tuning for DP-SGD, LoRA for DP-LoRA.
Quick: 96 lines, 4 steps of B=8, T=32; epsilon 1 for both, inf for full fine-tuning, and masking (the numbers show
the mechanics, not the trade-off: 4 steps memorise nothing); full: 512 lines, 80 steps of B=32, T=48.
"""

from __future__ import annotations

import math
import random
import statistics
import time
import warnings
from collections.abc import Callable, Iterator

import torch
from torch import nn

from mlcore.bench import Context, Goal, Plot, Result, Table, Timing

DESCRIPTION = "DP-SGD: step time / memory vs non-private and Opacus; canary exposure vs perplexity at eps 1,3,8,inf"
SPEED_GOAL = 1 / 1.2
EPSILONS = (1.0, 3.0, 8.0, math.inf)
DELTA = 1e-5
REPETITIONS = (4, 16)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PLOTS = [Plot(name="dp_exposure_vs_epsilon", x="epsilon_x", y="exposure_k16", series="mode",
              where={"task": "privacy-utility"}, title="canary exposure (k=16) vs epsilon (inf plotted at 30)",
              ylabel="exposure (bits)", logx=True)]
TABLES = [
    Table("DP step time and peak memory (tiny target)", where={"task": "cost"}, params=("method",),
          columns=("peak_train_MB", "vs_non_private", "trainable_params")),
    Table("Privacy-utility: canary exposure vs held-out perplexity", where={"task": "privacy-utility"},
          params=("mode", "epsilon"), columns=("noise_multiplier", "exposure_k4", "exposure_k16", "heldout_ppl")),
]


# ----------------------------------------------------------------------------------------------- cost

def _model(lora: bool, device: torch.device) -> nn.Module:
    from mlcore.finetune import LoraConfig, apply_lora
    from mlcore.training import load_tiny

    model = load_tiny("target")[0]
    if lora:
        apply_lora(model, LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS),
                   generator=torch.Generator().manual_seed(0), verbose=False)
    return model.to(device).train()


def _step(method: str, model: nn.Module, batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    from mlcore.training.dp import DPGradient
    from mlcore.training.dp_opacus import OpacusDP, opacus_sequence_loss

    B = batch["input_ids"].size(0)
    params = [p for p in model.parameters() if p.requires_grad]
    state: dict = {}

    def step() -> None:  # the optimizer is made in the first step so its moments count in that step's peak
        if method.startswith("Opacus"):
            if "dp" not in state:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    state["dp"] = OpacusDP(model, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=B)
            state["dp"].step(batch)
            return
        if "opt" not in state:
            state["opt"] = torch.optim.AdamW(params, lr=1e-5)
        if method == "non-private":
            (opacus_sequence_loss(model(batch["input_ids"]), batch["labels"]) / B).backward()
        else:
            if "dp" not in state:
                state["dp"] = DPGradient(model, max_grad_norm=1.0, noise_multiplier=1.0, expected_batch_size=B)
                state["gen"] = torch.Generator(device=batch["input_ids"].device).manual_seed(0)
            state["dp"].compute([batch], state["gen"])
        state["opt"].step()
        state["opt"].zero_grad(set_to_none=True)

    return step


def _cost(ctx: Context) -> Iterator[Result]:
    from mlcore.finetune.measure import peak_training_bytes
    from mlcore.training.loss import causal_lm_labels

    B, T = (8, 64) if ctx.quick else (32, 128)
    ids = torch.randint(0, 4096, (B, T), generator=torch.Generator().manual_seed(1))
    batch = {k: v.to(ctx.device) for k, v in {"input_ids": ids, "labels": causal_lm_labels(ids)}.items()}
    methods = ("non-private", "mlcore DP", "Opacus DP", "mlcore DP-LoRA", "Opacus DP-LoRA")
    setups = {}
    for method in methods:
        model = _model("LoRA" in method, ctx.device)
        step = _step(method, model, batch)
        peak = peak_training_bytes(model, step, ctx.device)
        step()  # warm-up
        setups[method] = {"step": step, "peak": peak,
                          "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    samples: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(5 if ctx.quick else 15):
        for method in methods:
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            t0 = time.perf_counter()
            setups[method]["step"]()
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            samples[method].append(time.perf_counter() - t0)
    timing = {}
    for method, xs in samples.items():
        q1, med, q3 = statistics.quantiles(xs, n=4, method="inclusive")
        timing[method] = Timing(med, q3 - q1, len(xs))
    for method in methods:
        twin = {"mlcore DP": "Opacus DP", "mlcore DP-LoRA": "Opacus DP-LoRA"}.get(method)
        extra = {"peak_train_MB": round(setups[method]["peak"] / 2**20, 1),
                 "vs_non_private": round(timing[method].median / timing["non-private"].median, 2),
                 "trainable_params": setups[method]["trainable"]}
        goal = Goal(">=", SPEED_GOAL, f"{method} step vs Opacus (tiny target), >= 1/1.2") if twin else None
        yield Result.from_timing("dp", method, {"task": "cost", "method": method, "B": B, "T": T},
                                 device=ctx.device, dtype="float32", timing=timing[method], twin=twin,
                                 twin_timing=timing[twin] if twin else None, memory_bytes=setups[method]["peak"],
                                 extra=extra, goal=goal)


# ------------------------------------------------------------------------------------ privacy-utility

def _encode(tokenizer, texts: list[str], T: int) -> dict[str, torch.Tensor]:
    """BPE ids right-padded with <|endoftext|> to T: ``{"input_ids": (N, T), "attention_mask": (N, T)}``."""
    pad = tokenizer.special_tokens["<|endoftext|>"]
    ids = torch.full((len(texts), T), pad, dtype=torch.long)
    mask = torch.zeros((len(texts), T), dtype=torch.long)
    for i, text in enumerate(texts):
        toks = tokenizer.encode_ordinary(text)[:T]
        ids[i, :len(toks)] = torch.tensor(toks)
        mask[i, :len(toks)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def log_perplexity_fn(model: nn.Module, tokenizer, T: int) -> Callable[[list[str]], torch.Tensor]:
    """texts -> summed next-token NLL (nats) of each under ``model``, (N,): the audit's scoring function."""
    @torch.no_grad()
    def score(texts: list[str]) -> torch.Tensor:
        model.eval()
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in _encode(tokenizer, texts, T).items()}
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).float()
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        return -(logp * batch["attention_mask"][:, 1:]).sum(-1).cpu()
    return score


def privacy_utility_run(mode: str, eps: float, *, n_lines: int, steps: int, batch_size: int, T: int = 48,
                        heldout_chars: int = 200_000, free_digits: int = 3, device: str = "cpu", seed: int = 0
                        ) -> dict[str, float]:
    """Fine-tune the tiny target on canary-planted lines with ``mode`` in {"DP-SGD", "DP-LoRA", "mask_pii"}
    at ``eps`` (inf = no DP); return exposure per repetition count, held-out perplexity and sigma."""
    from mlcore.finetune import LoraConfig, apply_lora
    from mlcore.privacy import canary_exposure, mask_pii
    from mlcore.privacy.audit import card_space, corpus_lines
    from mlcore.training import TrainConfig, evaluate, load_tiny, train
    from mlcore.training.assets import tiny_heldout_text

    model, tokenizer = load_tiny("target")
    rng = random.Random(seed)
    space = card_space(free_digits)
    secrets = []
    while len(secrets) < len(REPETITIONS):
        s = space.sample(1, rng)[0]
        if s not in secrets:
            secrets.append(s)
    texts = corpus_lines(n_lines, 200, seed) + [space.render(s) for s, k in zip(secrets, REPETITIONS)
                                                 for _ in range(k)]
    rng.shuffle(texts)
    if mode == "mask_pii":
        texts = [mask_pii(t) for t in texts]
    if mode == "DP-LoRA":
        apply_lora(model, LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS),
                   generator=torch.Generator().manual_seed(seed), verbose=False)
    dp = mode != "mask_pii" and math.isfinite(eps)
    config = TrainConfig(max_steps=steps, batch_size=batch_size, lr=5e-3 if mode == "DP-LoRA" else 1e-3,
                         warmup_steps=0, weight_decay=0.0, log_every=steps, progress=False, seed=seed,
                         cpu=device == "cpu", mixed_precision="no", dp=dp,
                         dp_target_epsilon=eps if dp else None, dp_delta=DELTA, dp_max_grad_norm=1.0)
    result = train(model.to(device), _encode(tokenizer, texts, T), config)
    held = tiny_heldout_text()[:heldout_chars]
    ids = torch.tensor(tokenizer.encode_ordinary(held))
    ids = ids[: ids.numel() // 128 * 128].view(-1, 128)
    ppl = evaluate(model, {"input_ids": ids}, batch_size=16, device=device)["perplexity"]
    t_score = max(len(tokenizer.encode_ordinary(space.render(s))) for s in space.sample(50, rng))
    exposures = canary_exposure(log_perplexity_fn(model, tokenizer, t_score + 2), secrets, space, method="exact")
    out = {f"exposure_k{k}": round(e.exposure, 2) for k, e in zip(REPETITIONS, exposures)}
    out.update(heldout_ppl=round(ppl, 3), noise_multiplier=round(result.history[-1].get("noise_multiplier", 0.0), 4),
               epsilon_spent=round(result.history[-1].get("epsilon", math.inf), 3), log2_R=math.log2(space.size))
    return out


def _privacy_utility(ctx: Context) -> Iterator[Result]:
    sizes = (dict(n_lines=96, steps=4, batch_size=8, T=32, heldout_chars=12_000, free_digits=2) if ctx.quick
             else dict(n_lines=512, steps=80, batch_size=32, T=48))
    runs = [(mode, eps) for mode in ("DP-SGD", "DP-LoRA") for eps in EPSILONS] + [("mask_pii", math.inf)]
    if ctx.quick:  # quick: the two ends of the curve and masking
        runs = [(m, e) for m, e in runs if e == 1.0] + [("DP-SGD", math.inf), ("mask_pii", math.inf)]
    for mode, eps in runs:
        t0 = time.perf_counter()
        figures = privacy_utility_run(mode, eps, device=str(ctx.device), **sizes)
        seconds = time.perf_counter() - t0
        yield Result("dp", f"{mode} eps={eps:g}", {"task": "privacy-utility", "mode": mode, "epsilon": f"{eps:g}",
                                                   "epsilon_x": eps if math.isfinite(eps) else 30.0, **sizes},
                     str(ctx.device), "float32", figures["exposure_k16"], 0.0, unit="bits",
                     extra={**figures, "seconds": round(seconds, 1)}, better="lower")


def run(ctx: Context) -> Iterator[Result]:
    yield from _cost(ctx)
    yield from _privacy_utility(ctx)


if __name__ == "__main__":  # a quick look without the suite: python -m benchmarks.dp
    print(privacy_utility_run("DP-SGD", 3.0, n_lines=64, steps=4, batch_size=16))
