"""Helpers of the quantization benchmark (``benchmarks/quant.py``): data, timing, sizes, errors, kernels.

- Held-out and calibration text: the ``pydoc_data.topics`` split the tiny models were trained on
  (``mlcore.training.pretrain.split_corpus`` with the logged seed, packed by ``mlcore.training.data.pack_tokens``
  exactly as ``pretrain`` packs its evaluation blocks), so perplexities are comparable with ``train_log.json``.
- ``time_calls``: a fixed number of timed calls (slow calls such as a whole ``generate`` still get >= 3 runs,
  which ``time_fn``'s autorange cannot promise within a short budget).
- Sizes: bits per parameter of stored weights (codes + scales + zero points + second-level scales, as
  ``QuantizedTensor.nbytes`` counts them), bytes of a model's tensors, and the same for bitsandbytes' formats.
- Weight reconstruction error ``||W - W_hat||_F / ||W||_F`` over a model's linear layers, with AWQ's folded
  scales undone (AWQ quantizes ``diag(1/s_out) W diag(s_in)``; its effective weight is
  ``diag(s_out) Q(W') diag(1/s_in)``).
- ``kernel_summary``: which matmul path each linear of a model runs (``QuantizedLinear.kernel``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mlcore.bench import Timing
from mlcore.quant import QuantizedLinear
from mlcore.quant.llm_int8 import Int8MixedLinear

EOT = "<|endoftext|>"
ACT = torch.bfloat16  # activations of every quantized path (the fast case of torch's CPU kernels)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence warnings and bitsandbytes' log (it logs an fp16 cast on every int8 call; ``quantize_model``
    names the layers it keeps in float). For measurements only: never hold it across a ``yield``."""
    logger = logging.getLogger("bitsandbytes")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def bitsandbytes_or_none() -> Any:
    """The ``bitsandbytes`` module, or None when it is not installed or has no backend here."""
    try:
        with quiet():
            import bitsandbytes
    except Exception:  # ImportError, or a backend that fails to initialise
        return None
    return bitsandbytes


# ---------------------------------------------------------------------------------------------- text


def heldout_blocks(tokenizer: Any, log: Mapping[str, Any]) -> Tensor:
    """The held-out evaluation blocks (N, block_size) of the tiny models, as ``pretrain`` built them.

    ``log`` is ``train_log.json``; the split is recomputed from its seed and checked against its topic list.
    """
    from mlcore.training.data import pack_tokens
    from mlcore.training.pretrain import PRESETS, split_corpus

    preset = PRESETS[log.get("preset", "tiny")]
    _, held = split_corpus(holdout=preset["holdout"], seed=int(log["seed"]))
    if sorted(held) != sorted(log["heldout_topics"]):
        raise ValueError(f"log: the recomputed held-out topics {sorted(held)[:3]}... differ from the logged "
                         f"{sorted(log['heldout_topics'])[:3]}...; was the corpus or the split changed?")
    eot = tokenizer.special_tokens[EOT]
    return pack_tokens([tokenizer.encode_ordinary(t) for t in held.values()], int(log["block_size"]),
                       separator_id=eot)


def calibration_blocks(tokenizer: Any, log: Mapping[str, Any], n_blocks: int, *, seed: int = 0) -> Tensor:
    """``n_blocks`` blocks (n_blocks, block_size) of *training* topics (never the held-out ones), drawn in a
    seeded order, for GPTQ / AWQ calibration. Only as many topics as needed are tokenized."""
    from mlcore.training.data import pack_tokens
    from mlcore.training.pretrain import PRESETS, split_corpus

    if not isinstance(n_blocks, int) or n_blocks < 1:
        raise ValueError(f"n_blocks: expected a positive int, got {n_blocks!r}")
    preset = PRESETS[log.get("preset", "tiny")]
    train, _ = split_corpus(holdout=preset["holdout"], seed=int(log["seed"]))
    keys = list(train)
    order = torch.randperm(len(keys), generator=torch.Generator().manual_seed(seed)).tolist()
    block, eot = int(log["block_size"]), tokenizer.special_tokens[EOT]
    docs: list[list[int]] = []
    count = 0
    for i in order:
        docs.append(tokenizer.encode_ordinary(train[keys[i]]))
        count += len(docs[-1]) + 1
        if count >= n_blocks * block:
            break
    blocks = pack_tokens(docs, block, separator_id=eot)
    if len(blocks) < n_blocks:
        raise ValueError(f"n_blocks: the training split holds only {len(blocks)} blocks, asked for {n_blocks}")
    return blocks[:n_blocks]


# ---------------------------------------------------------------------------------------------- timing


def time_calls(fn: Callable[[], object], *, runs: int = 3, warmup: int = 1,
               device: torch.device | str = "cpu") -> Timing:
    """Median and IQR (seconds) of exactly ``runs`` calls of ``fn`` after ``warmup`` untimed ones."""
    if not isinstance(runs, int) or runs < 1 or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"runs must be an int >= 1 and warmup an int >= 0, got runs={runs!r}, warmup={warmup!r}")
    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    times.sort()
    q1, q3 = (statistics.quantiles(times, n=4, method="inclusive")[i] for i in (0, 2)) if runs > 1 else (0.0, 0.0)
    return Timing(statistics.median(times), q3 - q1, runs)


# ---------------------------------------------------------------------------------------------- sizes


def tensor_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``module``, each storage counted once (tied weights once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in list(module.parameters()) + [b for b in module.buffers() if b is not None]:
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def layer_weight_bytes(layer: nn.Module) -> tuple[int, int]:
    """(bytes stored for the weight, number of weight parameters) of a linear layer of any kind.

    ``QuantizedLinear``: codes + scales + zero points + double-quant level (``QuantizedTensor.nbytes``; the int4
    kernel's repacked copy is a cache, not counted). ``Int8MixedLinear``: int8 codes + fp32 row absmax (+ the
    kept float weight). ``nn.Linear``: its weight in its dtype.
    """
    if isinstance(layer, QuantizedLinear):
        qt = layer.quantized_weight
        return qt.nbytes, qt.numel
    if isinstance(layer, Int8MixedLinear):
        nbytes = layer.weight_int8.numel() + layer.weight_absmax.numel() * 4
        if layer.weight_fp is not None:
            nbytes += layer.weight_fp.numel() * layer.weight_fp.element_size()
        return nbytes, layer.weight_int8.numel()
    if isinstance(layer, nn.Linear):
        return layer.weight.numel() * layer.weight.element_size(), layer.weight.numel()
    raise ValueError(f"layer: expected nn.Linear, QuantizedLinear or Int8MixedLinear, got {type(layer).__name__}")


def linear_bits_per_parameter(model: nn.Module, names: list[str]) -> float:
    """Bits per weight parameter over the layers ``names`` of ``model`` (kept float layers at their width)."""
    if not names:
        raise ValueError("names: expected at least one layer name, got none")
    nbytes = numel = 0
    for name in names:
        b, n = layer_weight_bytes(model.get_submodule(name))
        nbytes, numel = nbytes + b, numel + n
    return 8.0 * nbytes / numel


def bnb_4bit_bits(packed: Tensor, state: Any) -> float:
    """Bits per parameter of bitsandbytes' ``quantize_4bit`` output: packed codes, absmax (uint8 codes when
    ``compress_statistics``), and the second level (its fp32 absmax and the fp32 offset). The shared code
    books (16 and 256 entries) are constants, not counted (mlcore does not count its own either)."""
    numel = math.prod(state.shape)
    nbytes = packed.numel() * packed.element_size() + state.absmax.numel() * state.absmax.element_size()
    if getattr(state, "state2", None) is not None:
        nbytes += state.state2.absmax.numel() * state.state2.absmax.element_size() + 4  # + offset (fp32)
    return 8.0 * nbytes / numel


# ---------------------------------------------------------------------------------------------- errors


def linear_weights(model: nn.Module, names: list[str]) -> dict[str, Tensor]:
    """Detached float32 copies of the weights (out, in) of the ``nn.Linear`` layers ``names``."""
    return {n: model.get_submodule(n).weight.detach().float().clone() for n in names}


def effective_weight(layer: nn.Module) -> Tensor:
    """The weight (out, in) float32 a linear layer of any kind multiplies by."""
    if isinstance(layer, (QuantizedLinear, Int8MixedLinear)):
        return layer.dequantized_weight().float()
    if isinstance(layer, nn.Linear):
        return layer.weight.detach().float()
    raise ValueError(f"layer: expected nn.Linear, QuantizedLinear or Int8MixedLinear, got {type(layer).__name__}")


def awq_fold_factors(mapping: Mapping[str, list[str]], ties: Mapping[str, Tensor],
                     searches: Mapping[str, Any]) -> dict[str, tuple[Tensor | None, Tensor | None]]:
    """Per linear name: (row divisor s_out (out,) or None, column multiplier s_in (in,) or None) that AWQ folded
    into its weight, ``W' = diag(1/s_out) W diag(s_in)``, from ``transformer_awq_mapping``'s pairs and
    ``awq_apply_scales``' search results (``{previous name: AWQSearch}``)."""
    factors: dict[str, list[Tensor | None]] = {}
    for prev, names in mapping.items():
        if prev not in searches:
            continue
        s = searches[prev].scales.float()
        tie = ties.get(names[0])
        s_full = s if tie is None else s[tie.to(s.device)]
        for n in names:
            factors.setdefault(n, [None, None])[1] = s_full
        factors.setdefault(prev, [None, None])[0] = s
    return {n: (f[0], f[1]) for n, f in factors.items()}


def unfold(weight: Tensor, factors: tuple[Tensor | None, Tensor | None] | None) -> Tensor:
    """``diag(s_out) W' diag(1/s_in)``: a weight with AWQ's folded scales taken out again."""
    if factors is None:
        return weight
    s_out, s_in = factors
    w = weight.float()
    if s_out is not None:
        w = w * s_out.to(w)[:, None]
    if s_in is not None:
        w = w / s_in.to(w)[None, :]
    return w


def weight_error(original: Mapping[str, Tensor], model: nn.Module,
                 folds: Mapping[str, tuple[Tensor | None, Tensor | None]] | None = None) -> float:
    """Relative reconstruction error ``sqrt(sum ||W - W_hat||^2) / sqrt(sum ||W||^2)`` over the layers of
    ``original`` ({name: W}); ``folds`` undoes AWQ's scales first (see :func:`awq_fold_factors`)."""
    num = den = 0.0
    for name, w in original.items():
        w_hat = unfold(effective_weight(model.get_submodule(name)), (folds or {}).get(name))
        num += float((w - w_hat.to(w)).pow(2).sum())
        den += float(w.pow(2).sum())
    return math.sqrt(num / den) if den else 0.0


# ---------------------------------------------------------------------------------------------- kernels


# what a batch-1 compiled CPU step runs instead of a path (mlcore._row_dot: int8 layers become row dot products
# that inductor generates, float ones too where inference/gemv_choice.py picks them; int4 keeps torch's kernel)
_ROW_DOT_PATHS = {"fp": "fp row dots", "int8pack": "int8 row dots"}


def kernel_summary(model: nn.Module, *, compiled_single_row: bool = False) -> str:
    """Which matmul path the model's linears run, e.g. ``"int8pack x28, fp x1"`` (``QuantizedLinear.last_kernel``,
    the path its latest forward took, else ``.kernel``; ``llm.int8`` for Int8MixedLinear, ``fp`` for nn.Linear).
    ``compiled_single_row``: the paths of a batch-1 compiled CPU decode step (``"int8 row dots x28, fp row dots
    x1"``)."""
    from mlcore.inference.gemv_choice import single_row_gemv

    counts: Counter[str] = Counter()
    fp_dtype = None
    for m in model.modules():
        if isinstance(m, QuantizedLinear):
            counts[m.last_kernel or m.kernel] += 1
        elif isinstance(m, Int8MixedLinear):
            counts["llm.int8"] += 1
        elif type(m) is nn.Linear:
            counts["fp"] += 1
            fp_dtype = m.weight.dtype
    if compiled_single_row:
        paths = dict(_ROW_DOT_PATHS)
        gemv = single_row_gemv(fp_dtype) if fp_dtype is not None else "row_dots"
        if gemv == "template" and any(hasattr(m, "prepare_traced") for m in model.modules()):
            gemv = "row_dots"  # int8 row-dot layers keep the step unfrozen: no template (CompiledDecoder's rule)
        paths["fp"] = {"library": "fp library GEMV", "template": "fp GEMM template"}.get(gemv, "fp row dots")
        counts = Counter({paths.get(k, k): v for k, v in counts.items()})
    return ", ".join(f"{k} x{v}" for k, v in counts.most_common())


def divisible_group(in_features: list[int], candidates: tuple[int, ...] = (128, 64, 32)) -> int:
    """The largest group size of ``candidates`` dividing every entry of ``in_features``."""
    for g in candidates:
        if all(k % g == 0 for k in in_features):
            return g
    raise ValueError(f"in_features: no group size of {candidates} divides all of {sorted(set(in_features))}")


def summarize_profile(ops: list[tuple[str, float, int]], wall_s: float, top: int = 6
                      ) -> list[tuple[str, float, int]]:
    """Rows (name, seconds, calls) of where one step's ``wall_s`` went: the ``top`` ops by self CPU time,
    the rest of the ops together, and the time outside any op (Python, module calls) when positive.

    ``ops``: (op name, self CPU seconds, calls) for every op of the profiled step.
    """
    if wall_s <= 0:
        raise ValueError(f"wall_s: expected a positive step time, got {wall_s!r}")
    ranked = sorted(ops, key=lambda r: -r[1])
    rows = list(ranked[:top])
    rest = ranked[top:]
    if rest:
        rows.append((f"other ops ({len(rest)} kinds)", sum(r[1] for r in rest), sum(r[2] for r in rest)))
    outside = wall_s - sum(r[1] for r in ops)
    if outside > 0:
        rows.append(("outside ops (Python, module calls)", outside, 0))
    return rows
