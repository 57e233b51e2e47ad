"""Models, engines and byte counts for ``benchmarks/anchors.py`` (the underscore keeps the suite from running it).

Every engine is driven the same way: batch 1, greedy, the same prompt ids, ``n`` new tokens; a *run* returns the
tokens, the time to the first new token (prefill) and the time of the other ``n - 1`` (decode). transformers and
mlcore are timed through their ``generate``'s streamer (called with the prompt, then once per new token, the
protocol both share), llama.cpp through :class:`mlcore.bench.llamacpp.LlamaCppRunner`.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mlcore.bench import Timing
from mlcore.bench.llamacpp import GreedyTiming

LLAMA_25M = dict(vocab_size=4096, d_model=512, n_layers=8, n_heads=8, n_kv_heads=2, max_seq_len=512)
INT4_GROUP = 64  # 4 bits + an fp32 scale and a uint8 zero per 64 weights = 4.625 bits/weight (Q4_0: 4.5)


@dataclass
class Case:
    """One model: mlcore float32 weights, its tokenizer and the prompt every engine continues."""

    key: str
    model: nn.Module
    tokenizer: Any
    prompt: list[int]


def build_case(key: str, prompt_len: int) -> Case:
    """``"tiny-4M"`` (the trained target) or ``"llama-25M"`` (the issue's 27M config, seeded random weights, as
    in ``benchmarks/decode.py``); both use the project's BPE tokenizer and a held-out text prompt."""
    from mlcore.training.assets import load_tiny, load_tiny_tokenizer, tiny_heldout_text

    if key == "tiny-4M":
        model, tok = load_tiny("target")
    elif key == "llama-25M":
        from mlcore.model import Transformer, TransformerConfig

        with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG state
            torch.manual_seed(0)
            model = Transformer(TransformerConfig(**LLAMA_25M)).eval()
        tok = load_tiny_tokenizer()
    else:
        raise ValueError(f"key must be 'tiny-4M' or 'llama-25M', got {key!r}")
    ids = tok.encode(tiny_heldout_text()[:20_000])[:prompt_len]
    return Case(key, model.eval(), tok, ids)


class Clock:
    """A ``generate`` streamer that timestamps every new token (the first ``put`` is the prompt)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self.tokens: list[int] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.stamps.append(time.perf_counter())
        self.tokens.append(int(value.reshape(-1)[0]))

    def end(self) -> None:
        pass


def _timed(call: Callable[[Clock], Any]) -> GreedyTiming:
    clock = Clock()
    t0 = time.perf_counter()
    with torch.inference_mode():
        call(clock)
    st = clock.stamps
    return GreedyTiming(clock.tokens, st[0] - t0, st[-1] - st[0], tuple(b - a for a, b in zip(st, st[1:])))


@dataclass
class Engine:
    """One engine at one precision: ``run(n)`` times a greedy run, ``logits()`` is the prompt's last row (V,)."""

    engine: str  # "transformers" | "mlcore" | "llama.cpp"
    fmt: str  # "fp32", "bf16", "int8", "q8_0", ...
    bits: str  # "32", "16", "8", "4": the comparison group
    run: Callable[[int], GreedyTiming]
    logits: Callable[[], torch.Tensor]
    weight_bytes: int
    kv_itemsize: int
    extra: dict[str, Any] = field(default_factory=dict)
    module: nn.Module | None = None  # the mlcore model, for the profile
    close: Callable[[], None] = lambda: None  # frees a llama.cpp context (its __del__ fails at interpreter exit)


def mlcore_engines(case: Case, *, slow: bool = False) -> list[Engine]:
    """mlcore ``generate`` with a StaticCache: fp32, bf16, int8 and int4 with bf16 activations (the fast
    kernels); ``slow`` adds int8 with fp32 activations, which ``QuantizedLinear`` serves by dequantizing."""
    from mlcore.inference import generate
    from mlcore.quant import quantize_model

    ids = torch.tensor([case.prompt])

    def engine(fmt: str, bits: str, model: nn.Module, compile: bool = False, **extra: Any) -> Engine:
        def run(n: int) -> GreedyTiming:  # a compiled engine compiles in the benchmark's warm-up run
            return _timed(lambda clock: generate(model, ids, max_new_tokens=n, cache="static", streamer=clock,
                                                 compile=compile))

        def logits() -> torch.Tensor:
            with torch.inference_mode():
                return model(ids)[0, -1].float()

        itemsize = next(model.parameters()).element_size()
        return Engine("mlcore", fmt, bits, run, logits, weight_bytes(model), itemsize, extra, model)

    def quantized(dtype: torch.dtype, scheme: str, **options: Any) -> nn.Module:
        with warnings.catch_warnings():  # the tied lm_head stays in float (quantize_model warns): noted in extra
            warnings.simplefilter("ignore", UserWarning)
            return quantize_model(copy.deepcopy(case.model).to(dtype), scheme, **options).eval()

    bf16 = torch.bfloat16
    remark = "tied lm_head kept in float"
    out = [engine("fp32", "32", case.model),
           engine("bf16", "16", copy.deepcopy(case.model).to(bf16)),
           engine("int8 + bf16 act", "8", quantized(bf16, "int8"), remark=remark),
           engine(f"int4 g{INT4_GROUP} + bf16 act", "4", quantized(bf16, "int4", group_size=INT4_GROUP),
                  remark=remark),
           # the decode step as one torch.compile graph (row-dot linears at batch 1; ~15-30 s to compile on 2 cores)
           engine("fp32, compiled", "32", case.model, compile=True),
           engine("int8 + bf16 act, compiled", "8", quantized(bf16, "int8"), compile=True, remark=remark),
           engine(f"int4 g{INT4_GROUP} + bf16 act, compiled", "4", quantized(bf16, "int4", group_size=INT4_GROUP),
                  compile=True, remark=remark)]
    if slow:
        out.insert(2, engine("int8", "8", quantized(torch.float32, "int8"), remark=remark + "; dequantize per call"))
    return out


def hf_engines(case: Case) -> list[Engine]:
    """transformers ``generate`` (its default DynamicCache) on the same weights, fp32 and bf16."""
    ids = torch.tensor([case.prompt])
    out = []
    for fmt, bits, dtype in (("fp32", "32", torch.float32), ("bf16", "16", torch.bfloat16)):
        hf = case.model.to_hf().to(dtype).eval()

        def run(n: int, hf: nn.Module = hf) -> GreedyTiming:
            return _timed(lambda clock: hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                                    min_new_tokens=n, do_sample=False, pad_token_id=0,
                                                    streamer=clock))

        def logits(hf: nn.Module = hf) -> torch.Tensor:
            with torch.inference_mode():
                return hf(ids).logits[0, -1].float()

        out.append(Engine("transformers", fmt, bits, run, logits, weight_bytes(hf), dtype.itemsize))
    return out


def llamacpp_engine(runner: Any, fmt: str, bits: str, prompt: list[int], weight_bytes_: int) -> Engine:
    """A llama.cpp runner as an :class:`Engine` (its K/V cache is f32 for the f32 gate file, else f16)."""
    return Engine("llama.cpp", fmt, bits, lambda n: runner.timed_greedy(prompt, n),
                  lambda: torch.from_numpy(runner.prefill(prompt)), weight_bytes_,
                  4 if runner.kv_type == "f32" else 2, {"kv_cache": runner.kv_type}, close=runner.close)


def profile_decode(model: nn.Module, prompt: list[int], steps: int = 16) -> tuple[float, float, float]:
    """(dense matmul seconds, low-bit matmul seconds, whole-step seconds) over ``steps`` mlcore decode steps under
    ``torch.profiler``, after an unprofiled prefill: the steps ``generate`` runs (one token, StaticCache,
    ``logits_to_keep=1``). Dense = ``aten::mm`` / ``addmm`` and oneDNN's packed bf16 linear (the decode copies of
    ``mlcore.attention.fused_linear``); low-bit = ``_weight_int8pack_mm`` / ``int4pack``."""
    from torch.profiler import ProfilerActivity, profile

    from mlcore.inference import StaticCache

    dense = ("aten::mm", "aten::addmm", "mkldnn::_linear_pointwise")
    lowbit = ("aten::_weight_int8pack_mm", "aten::_weight_int4pack_mm_for_cpu")
    with torch.inference_mode():
        kv = StaticCache.for_model(model, 1, len(prompt) + steps + 1)
        tok = model(torch.tensor([prompt]), cache=kv, logits_to_keep=1)[:, -1].argmax(-1, keepdim=True)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for i in range(steps):
                pos = torch.tensor([[len(prompt) + i]])
                tok = model(tok, cache=kv, position_ids=pos, logits_to_keep=1, validate=False)[:, -1].argmax(
                    -1, keepdim=True)
            total = time.perf_counter() - t0
    events = prof.key_averages()
    return (sum(ev.self_cpu_time_total for ev in events if ev.key in dense) / 1e6,
            sum(ev.self_cpu_time_total for ev in events if ev.key in lowbit) / 1e6, total)


def weight_bytes(model: nn.Module) -> int:
    """Bytes one batch-1 decode step reads from the weights: every distinct tensor of the state dict (float
    weights, or quantized codes + scales + zeros) once, a tied head once; an untied input embedding and an mlcore
    learned position table (``pos_emb``) contribute one row each (a lookup), not the whole table."""
    seen: dict[tuple[int, int], int] = {}
    for t in model.state_dict().values():
        seen[(t.data_ptr(), t.numel())] = t.numel() * t.element_size()
    total = sum(seen.values())
    embed = model.get_input_embeddings().weight if hasattr(model, "get_input_embeddings") else model.embed.weight
    head = model.lm_head.weight
    tables = [embed] if embed.data_ptr() != head.data_ptr() else []
    pos = getattr(model, "pos_emb", None)
    tables += [pos.weight] if pos is not None else []
    for w in tables:
        total -= (w.shape[0] - 1) * w.shape[1] * w.element_size()
    return total


def kv_bytes(config: Any, context: float, itemsize: int) -> float:
    """K and V bytes one decode step reads at ``context`` cached tokens: 2 L Hkv T D itemsize."""
    return 2.0 * config.n_layers * config.n_kv_heads * context * config.head_dim * itemsize


def to_timing(samples: list[float]) -> Timing:
    """Median, IQR and count of per-run samples (seconds)."""
    xs = sorted(samples)
    if len(xs) < 2:
        return Timing(xs[0], 0.0, len(xs))
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return Timing(statistics.median(xs), q[2] - q[0], len(xs))
