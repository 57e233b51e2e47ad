"""Fine-tuning cost: time per training step and peak training memory of full fine-tuning, LoRA and QLoRA, and
mlcore's LoRA / QLoRA against PEFT's on the very same model.

Models (``params["model"]``):

- ``tiny-target``: the project's trained decoder (``load_tiny("target")``, 4M parameters);
- ``llama-27M``: ``TransformerConfig(vocab_size=4096, d_model=512, n_layers=8, n_heads=8, n_kv_heads=2,
  max_seq_len=512)`` (seeded random weights), next-token loss;
- ``minilm``: pretrained all-MiniLM-L6-v2 + mean pooling + a 12-way linear head, cross-entropy.

Methods (``params["method"]``), r = 8, alpha = 16, LoRA on every linear layer of the body (decoders:
q/k/v/o/gate/up/down; MiniLM: query/key/value/dense, head trained in full):

- ``full``: every weight trains; ``lora``: ``mlcore.finetune.apply_lora``; ``qlora``: ``prepare_qlora`` (NF4,
  blocks of 64, double quantization; compute in float32 on CPU);
- twins: ``peft_lora`` (``peft.get_peft_model`` on the same model) and ``peft_qlora`` (PEFT LoRA over
  bitsandbytes ``Linear4bit`` NF4 with double quantization, ``compress_statistics=True``).

One step = forward, loss, backward, AdamW step, zero_grad (no gradient checkpointing, so LoRA and QLoRA differ only
in how the frozen weights are stored). The five methods of a model are timed one step each per round, interleaved
(7 rounds quick, 15 full; median and IQR over the rounds), so drifting machine load does not favour one of them. Peak training memory = the model's tensors + the peak of its first step
from a clean state (gradients, AdamW moments and saved activations; ``mlcore.finetune.measure``). Speed-up = PEFT
step time / mlcore step time (> 1: mlcore faster). Quick: decoders B=4, T=64; MiniLM B=16, T=32. Full: B=8,
T=256; MiniLM B=32, T=64.

Goals (issue 11): mlcore LoRA step time at most 1.05x PEFT's (speed-up >= 0.952) on each model; QLoRA base
weights at most 0.52 bytes per parameter; LoRA peak training memory at most half of full fine-tuning's on
the 27M config. That last ratio depends on the shape: at the quick preset's 4 x 64 tokens the weights, their
gradients and AdamW's moments dominate full fine-tuning's peak; at longer inputs the saved activations (the same
for both methods) dominate and the ratio rises towards 1 unless gradient checkpointing is on.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from mlcore.bench import Context, Goal, Result, Table, Timing
from mlcore.finetune import LoraConfig, apply_lora, prepare_qlora, trainable_parameters
from mlcore.finetune.measure import model_bytes, peak_training_bytes, quantized_base_bytes

DESCRIPTION = "full fine-tuning vs LoRA vs QLoRA: step time, peak memory; mlcore LoRA/QLoRA vs PEFT (+ bitsandbytes)"
MODELS = ("tiny-target", "llama-27M", "minilm")
TABLES = [Table(f"{m}", where={"model": m}, params=("method",),
                columns=("trainable_params", "peak_train_MB", "memory_vs_full", "base_bytes_per_param"))
          for m in MODELS]
DECODER_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MINILM_TARGETS = ["query", "key", "value", "dense"]
R, ALPHA = 8, 16
SPEED_GOAL = 1 / 1.05


def _llama_27m() -> nn.Module:
    from mlcore.model import Transformer, TransformerConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Transformer(TransformerConfig(vocab_size=4096, d_model=512, n_layers=8, n_heads=8, n_kv_heads=2,
                                             max_seq_len=512))


def _builder(name: str) -> Callable[[], nn.Module]:
    if name == "tiny-target":
        from mlcore.training import load_tiny

        return lambda: load_tiny("target")[0]
    if name == "llama-27M":
        return _llama_27m
    from mlcore.finetune.encoder_classifier import load_minilm_classifier

    return lambda: load_minilm_classifier(12, seed=0)[0]


def _bnb_nf4_(model: nn.Module, skip: tuple[str, ...]) -> nn.Module:
    """Swap every ``nn.Linear`` (but ``skip``) for bitsandbytes' ``Linear4bit`` (NF4, double quantization)."""
    import bitsandbytes as bnb

    for name, child in list(model.named_modules()):
        if type(child) is not nn.Linear or name.endswith(skip):
            continue
        q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                              compute_dtype=child.weight.dtype, quant_type="nf4", compress_statistics=True)
        q.weight = bnb.nn.Params4bit(child.weight.data.cpu().clone(), requires_grad=False, quant_type="nf4",
                                     compress_statistics=True)
        if child.bias is not None:
            q.bias = nn.Parameter(child.bias.data.clone(), requires_grad=False)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, q)
    return model


def _prepare(model_name: str, method: str, device: torch.device) -> nn.Module:
    """A fresh model of ``model_name`` made ready for ``method``, on ``device``."""
    model = _builder(model_name)()
    minilm = model_name == "minilm"
    targets = MINILM_TARGETS if minilm else DECODER_TARGETS
    save = ["head"] if minilm else None
    if method in ("lora", "qlora"):
        config = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=targets, modules_to_save=save)
        gen = torch.Generator().manual_seed(0)
        if method == "lora":
            apply_lora(model, config, generator=gen, verbose=False)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tied lm_head stays in full precision, as intended
                prepare_qlora(model, config, generator=gen, verbose=False)
    elif method in ("peft_lora", "peft_qlora"):
        import peft

        if method == "peft_qlora":
            _bnb_nf4_(model, ("head", "lm_head"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = peft.get_peft_model(model, peft.LoraConfig(r=R, lora_alpha=ALPHA, target_modules=targets,
                                                               modules_to_save=save))
    return model.to(device).train()


def _batch(model_name: str, B: int, T: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    if model_name == "minilm":
        ids = torch.randint(1000, 29000, (B, T), generator=g)
        ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
        return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
                "labels": torch.randint(0, 12, (B,), generator=g).to(device)}
    return {"input_ids": torch.randint(0, 4096, (B, T), generator=g).to(device)}


def _step_fn(model: nn.Module, batch: dict[str, torch.Tensor], minilm: bool) -> Callable[[], None]:
    params = [p for p in model.parameters() if p.requires_grad]
    state: dict[str, torch.optim.Optimizer] = {}

    def step() -> None:
        if "opt" not in state:  # created inside the first step, so its moments count in that step's peak
            state["opt"] = torch.optim.AdamW(params, lr=1e-5)
        if minilm:
            loss = F.cross_entropy(model(batch["input_ids"], batch["attention_mask"]), batch["labels"])
        else:
            out = model(batch["input_ids"])
            logits = out if isinstance(out, torch.Tensor) else out.logits
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["input_ids"][:, 1:].flatten())
        loss.backward()
        state["opt"].step()
        state["opt"].zero_grad(set_to_none=True)

    return step


def _setup(model_name: str, method: str, ctx: Context, B: int, T: int) -> dict:
    """Build the model for ``method``, measure its first step's peak memory and its parameter figures."""
    model = _prepare(model_name, method, ctx.device)
    step = _step_fn(model, _batch(model_name, B, T, ctx.device), model_name == "minilm")
    peak = peak_training_bytes(model, step, ctx.device)
    step()  # warm-up: the first plain step (allocator, lazy init) is not timed
    trainable, total = trainable_parameters(model)
    qbytes, qparams = quantized_base_bytes(model)
    if method == "peft_qlora":  # bitsandbytes keeps the codes in Params4bit and the scales in its quant_state
        qbytes, qparams, packed = _bnb_bytes(model)
        total += qparams - packed  # count each 4-bit weight as one parameter, as for mlcore's layers
    return {"step": step, "peak": peak, "trainable": trainable,
            "total": total, "model_bytes": model_bytes(model),
            "base_bytes_per_param": round(qbytes / qparams, 4) if qparams else None}


def _time_interleaved(setups: dict[str, dict], ctx: Context, rounds: int) -> None:
    """Time one step of every method per round, methods interleaved (A B C D E, A B C D E, ...), and store each
    method's median and IQR over the rounds. A step takes a second or so on a CPU, long enough for a plain
    ``perf_counter`` (synchronized on CUDA); interleaving keeps a machine whose load drifts from favouring the
    method that happened to run in a quiet moment, which consecutive blocks of ``time_fn`` runs did."""
    samples: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(rounds):
        for name, m in setups.items():
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            t0 = time.perf_counter()
            m["step"]()
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            samples[name].append(time.perf_counter() - t0)
    for name, xs in samples.items():
        q1, median, q3 = statistics.quantiles(xs, n=4, method="inclusive")
        setups[name]["timing"] = Timing(median, q3 - q1, len(xs))


def _bnb_bytes(model: nn.Module) -> tuple[int, int, int]:
    """``(bytes, weights, packed elements)`` of bitsandbytes' 4-bit layers (codes, absmax, nested absmax)."""
    import bitsandbytes as bnb

    nbytes = params = packed = 0
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            qs = m.weight.quant_state
            nbytes += m.weight.numel() * m.weight.element_size() + qs.absmax.numel() * qs.absmax.element_size()
            if qs.state2 is not None:
                nbytes += qs.state2.absmax.numel() * qs.state2.absmax.element_size() + 4  # + the offset
            params += m.in_features * m.out_features
            packed += m.weight.numel()
    return nbytes, params, packed


def _goals(model_name: str, method: str) -> list[Goal]:
    goals = []
    if method == "lora":
        goals.append(Goal(">=", SPEED_GOAL, f"mlcore LoRA step vs PEFT LoRA ({model_name}), >= 1/1.05"))
    if model_name == "llama-27M" and method == "lora":
        goals.append(Goal("<=", 0.5, "LoRA / full fine-tuning peak training memory (27M)", metric="memory_vs_full"))
    if model_name == "llama-27M" and method == "qlora":
        goals.append(Goal("<=", 0.52, "QLoRA NF4 base weights, bytes per parameter (27M)",
                          metric="base_bytes_per_param"))
    return goals


def run(ctx: Context) -> Iterator[Result]:
    for model_name in MODELS:
        minilm = model_name == "minilm"
        B, T = ((16, 32) if minilm else (4, 64)) if ctx.quick else ((32, 64) if minilm else (8, 256))
        measured = {m: _setup(model_name, m, ctx, B, T) for m in ("full", "lora", "peft_lora", "qlora", "peft_qlora")}
        _time_interleaved(measured, ctx, rounds=7 if ctx.quick else 15)
        full_peak = measured["full"]["peak"]
        for method, m in measured.items():
            twin = {"lora": "peft_lora", "qlora": "peft_qlora"}.get(method)
            extra = {"trainable_params": m["trainable"], "total_params": m["total"],
                     "peak_train_MB": round(m["peak"] / 2**20, 1), "memory_vs_full": round(m["peak"] / full_peak, 3),
                     "model_MB": round(m["model_bytes"] / 2**20, 1), "base_bytes_per_param": m["base_bytes_per_param"]}
            if twin:
                extra["memory_vs_twin"] = round(m["peak"] / measured[twin]["peak"], 3)
            yield Result.from_timing(
                "finetune", method, {"model": model_name, "method": method, "B": B, "T": T, "r": R},
                device=ctx.device, dtype="float32", timing=m["timing"], memory_bytes=m["peak"],
                twin={"lora": "peft LoRA", "qlora": "peft LoRA + bitsandbytes NF4"}.get(method),
                twin_timing=measured[twin]["timing"] if twin else None, extra=extra,
                extra_runs={"memory_vs_full": None, "base_bytes_per_param": None},  # byte counts, not timings
                goal=_goals(model_name, method) or None,
            )
