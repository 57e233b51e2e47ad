"""Models, prompts, twins, timing and byte counts for ``benchmarks/decode.py`` (not a topic: the underscore
keeps the suite from running it).

Two models with the same weights in mlcore and transformers (``model.to_hf()``):

- ``tiny-4M``: the project's trained target (``mlcore.training.load_tiny("target")``, 4 layers, d_model 256),
  prompted with held-out text; its draft drives the speculative rows.
- ``llama-25M``: the issue's "~27M" Llama config (8 layers, d_model 512, 8 query / 2 KV heads, vocab 4096,
  24.7M parameters with the tied head) with seeded random weights, prompted with seeded random ids.

Optional pieces written elsewhere (paged / sliding / int8 caches, speculative decoding, the HF twins) are
looked up when the benchmark runs; a missing one becomes a "not available" note instead of a failure.
"""

from __future__ import annotations

import importlib
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mlcore.bench import Timing, time_fn
from mlcore.bench.probe import GemvKernel

CACHE_KINDS = ("static", "dynamic", "paged", "sliding", "int8")
_CACHE_MODULES = {"paged": "paged_cache", "sliding": "sliding_cache", "int8": "quantized_cache"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class Pair:
    """One model in both implementations, on one device and dtype."""

    key: str  # "tiny-4M" | "llama-25M"
    mlcore: nn.Module
    hf: nn.Module
    dtype: str


def missing(module: str, name: str) -> str | None:
    """None when ``mlcore.inference.<module>.<name>`` imports, else why not (one line)."""
    try:
        return None if hasattr(importlib.import_module(f"mlcore.inference.{module}"), name) else f"no {name}"
    except Exception as exc:  # noqa: BLE001 -- any failure to import means "not available here"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"


def cache_missing(kind: str) -> str | None:
    """Why mlcore's ``kind`` cache cannot be used in this checkout, or None."""
    if kind not in _CACHE_MODULES:
        return None
    names = {"paged": "PagedCache", "sliding": "SlidingWindowCache", "int8": "QuantizedCache"}
    return missing(_CACHE_MODULES[kind], names[kind])


def build_models(key: str) -> tuple[nn.Module, Any]:
    """(mlcore model in float32 eval mode, tokenizer or None)."""
    if key == "tiny-4M":
        from mlcore.training import load_tiny

        return load_tiny("target")
    if key == "tiny-draft":
        from mlcore.training import load_tiny

        return load_tiny("draft")
    if key == "llama-25M":
        from mlcore.model import Transformer, TransformerConfig

        config = TransformerConfig(vocab_size=4096, d_model=512, n_layers=8, n_heads=8, n_kv_heads=2,
                                   max_seq_len=512)
        fork = torch.random.fork_rng(devices=[])  # seeded weights without touching the caller's RNG state
        with fork:
            torch.manual_seed(0)
            model = Transformer(config)
        return model.eval(), None
    raise ValueError(f"model key must be 'tiny-4M', 'tiny-draft' or 'llama-25M', got {key!r}")


def make_pair(key: str, dtype: str, device: torch.device, base: nn.Module | None = None) -> Pair:
    """The mlcore model and its transformers twin, same weights, in ``dtype`` on ``device``."""
    model = base if base is not None else build_models(key)[0]
    model = model.to(device=device, dtype=DTYPES[dtype]).eval()
    hf = model.to_hf().to(device=device, dtype=DTYPES[dtype]).eval()
    return Pair(key, model, hf, dtype)


def prompts(key: str, batch: int, length: int, device: torch.device, tokenizer: Any = None) -> Tensor:
    """(batch, length) prompt ids: windows of held-out text for the trained model, seeded random ids otherwise."""
    if tokenizer is not None:
        from mlcore.training.assets import tiny_heldout_text

        ids = tokenizer.encode(tiny_heldout_text()[:200_000])
        start = 200  # the stretch notebook 05 measures speculative acceptance on
        stride = max((len(ids) - start - length) // max(batch, 1), 1)
        rows = [ids[start + i * stride: start + i * stride + length] for i in range(batch)]
        if all(len(r) == length for r in rows):
            return torch.tensor(rows, device=device)
    gen = torch.Generator().manual_seed(1234 + batch * 7 + length)
    return torch.randint(0, 4096, (batch, length), generator=gen).to(device)


def interleaved(fns: dict[str, Callable[[], Any]], *, device: torch.device, rounds: int,
                min_run_time: float = 0.02, warm: bool = True) -> dict[str, list[float]]:
    """Median seconds of one call of each fn, per round, the fns taking turns within every round.

    Each round times every fn once with :func:`mlcore.bench.time_fn` (``torch.utils.benchmark`` on CPU, CUDA
    events on GPU); interleaving puts mlcore and its twin under the same machine load, so their ratio is
    fairer than two back-to-back blocks on a shared machine. ``warm``: run each fn once before round one.
    """
    for fn in fns.values() if warm else ():
        fn()
    per: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            per[name].append(time_fn(fn, device=device, warmup=0, min_run_time=min_run_time).median)
    return per


def to_timing(samples: list[float]) -> Timing:
    """Median, IQR and count of per-round samples (seconds)."""
    xs = sorted(samples)
    if len(xs) == 1:
        return Timing(xs[0], 0.0, 1)
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return Timing(statistics.median(xs), q[2] - q[0], len(xs))


def paired_difference(full: list[float], part: list[float]) -> Timing:
    """Per-round ``full - part`` (e.g. generate(N) - generate(1) = the N - 1 decode steps), as a Timing."""
    return to_timing([max(a - b, 1e-9) for a, b in zip(full, part)])


def first_difference(a: Tensor, b: Tensor) -> int | None:
    """Index of the first column where (B, T) token tensors differ in any row (None: identical)."""
    if a.shape != b.shape:
        n = min(a.shape[1], b.shape[1])
        diff = (a[:, :n] != b[:, :n]).any(dim=0).nonzero()
        return int(diff[0]) if len(diff) else n
    diff = (a != b).any(dim=0).nonzero()
    return int(diff[0]) if len(diff) else None


def weight_bytes(model: nn.Module, batch: int = 1) -> int:
    """Bytes a decode step of ``batch`` rows reads from the weights of a float mlcore ``Transformer``:

        sum of every distinct parameter's bytes                 (a tied head once: the vocabulary projection
                                                                 reads the whole shared matrix)
        - (V - min(B, V)) · d · itemsize  for an untied input embedding (a lookup reads B of its V rows)
        - (P - 1) · d · itemsize          for a learned position table (one row: the batch shares the position)

    Parameters only: the decode-layout copies a step reads instead of ``nn.Linear``'s weights
    (``mlcore.attention.fused_linear``) are the same bytes, and the RoPE tables are buffers (one row per step).
    A quantized model keeps its codes in buffers, which this does not count (``_anchors_setup.weight_bytes``
    does)."""
    params = {id(p): p for p in model.parameters()}
    total = sum(p.numel() * p.element_size() for p in params.values())
    embed = getattr(model, "embed", None)
    head = getattr(model, "lm_head", None)
    if embed is not None and head is not None and embed.weight is not head.weight:
        w = embed.weight
        total -= (w.shape[0] - min(batch, w.shape[0])) * w.shape[1] * w.element_size()
    pos = getattr(model, "pos_emb", None)  # LearnedEncoding (GPT-2 style): one row per step, not the table
    if pos is not None:
        w = pos.weight
        total -= (w.shape[0] - 1) * w.shape[1] * w.element_size()
    return total


def kv_bytes_read(model: nn.Module, batch: int, context: float, itemsize: int) -> float:
    """Bytes of K and V one decode step reads at ``context`` cached tokens: 2 L B Hkv T D itemsize."""
    c = model.config
    return 2.0 * c.n_layers * batch * c.n_kv_heads * context * c.head_dim * itemsize


def mean_decode_context(prompt: int, new: int) -> float:
    """The mean number of keys the ``new - 1`` decode steps of ``generate(prompt, new)`` attend to: step ``i``
    (i = 1 .. new - 1) feeds token ``i`` and sees the prompt, the ``i - 1`` tokens before it and itself,
    ``prompt + i`` keys; their mean is ``prompt + new / 2``."""
    return prompt + new / 2


def roofline_bytes(model: nn.Module, batch: int, context: float) -> float:
    """Bytes the ideal decode step reads, each once: ``weight_bytes(model, batch)`` (see there) plus the K and V
    of ``context`` keys, ``2 · L · B · Hkv · T · D · itemsize`` in the model's dtype (pass
    :func:`mean_decode_context` for a ``generate`` call). The roofline step time is these bytes over the probe's
    batch-1 GEMV bandwidth of that dtype (:func:`paired_roofline`)."""
    item = torch.empty((), dtype=next(model.parameters()).dtype).element_size()
    return weight_bytes(model, batch) + kv_bytes_read(model, batch, context, item)


@dataclass
class GemvCeiling:
    """Every batch-1 GEMV candidate of the probe (``mlcore.bench.probe.gemv_kernels``) for one dtype, timed in
    each round beside the steps; a round's ceiling is the fastest of them *in that round*, so neither a drifting
    VM nor a candidate that happened to lose the probe's one-off comparison can leave a faster kernel out."""

    kernels: list[GemvKernel]

    def fns(self) -> dict[str, Callable[[], Any]]:
        return {f"ceiling|{k.name}": k.fn for k in self.kernels}

    def per_round(self, per: dict[str, list[float]]) -> tuple[list[float], str]:
        """(GB/s of the fastest candidate in each round, the name of the one fastest most often)."""
        rates = {k.name: [k.gbs(t) for t in per[f"ceiling|{k.name}"]] for k in self.kernels}
        rounds = len(next(iter(rates.values())))
        winners = [max(rates, key=lambda name, r=r: rates[name][r]) for r in range(rounds)]
        return [rates[w][r] for r, w in enumerate(winners)], max(set(winners), key=winners.count)


def paired_roofline(step_bytes: float, steps: list[float], ceiling_gbs: list[float]) -> tuple[float, float]:
    """(median fraction, median GB/s): per round, the ideal step (``step_bytes`` at that round's bandwidth of the
    probe's fastest GEMV, ``mlcore.bench.probe.GemvKernel``) over the measured step. Pairing the two within a
    round keeps a VM's drifting speed out of the fraction."""
    fracs = [step_bytes / (gbs * 1e9) / max(t, 1e-12) for t, gbs in zip(steps, ceiling_gbs)]
    return statistics.median(fracs), statistics.median(ceiling_gbs)


def hf_cache_bytes(past: Any) -> int:
    """Bytes of the K / V tensors a transformers cache object holds (its ``layers[i].keys / .values``)."""
    total = 0
    for layer in getattr(past, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, Tensor):
                total += t.numel() * t.element_size()
    return total
