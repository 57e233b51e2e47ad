"""What compiled decoding asks of ``torch.compile``, and of what: the modes, the models it can trace, the cache
length buckets, inductor's settings for the step's graph, and the guard stance of later steps.

:mod:`mlcore.inference.compiled` holds the decoder itself; this module holds the decisions it is made of, each
with the measurement that justified it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect

import torch
from torch import nn

from mlcore._gemm_template import TEMPLATE_OPTIONS as TEMPLATE_OPTIONS  # re-exported for compiled.py

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_BACKENDS = ("naive", "torch")


def compile_errors() -> tuple[type[Exception], ...]:
    """What tracing or compiling a step raises for code it cannot capture (a host read, an unsupported op)."""
    import torch._dynamo.exc
    from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

    return torch._dynamo.exc.TorchDynamoException, GuardOnDataDependentSymNode


def recompile_limit_errors() -> tuple[type[Exception], ...]:
    """What a fullgraph function raises once its code holds ``recompile_limit`` graphs (older torch: the second name)."""
    import torch._dynamo.exc

    names = ("FailOnRecompileLimitHit", "FailOnCacheLimitHit")
    return tuple(getattr(torch._dynamo.exc, n) for n in names if hasattr(torch._dynamo.exc, n))


def resolve_mode(compile: bool | str, device: torch.device) -> str:
    """``compile`` as a torch.compile mode: True = "reduce-overhead" (CUDA graphs) on CUDA, "default" elsewhere."""
    if compile is True:
        return "reduce-overhead" if device.type == "cuda" else "default"
    if not isinstance(compile, str) or compile not in COMPILE_MODES:
        raise ValueError(f"compile must be False, True or one of {COMPILE_MODES}, got {compile!r}")
    return compile


def check_compilable(model: nn.Module) -> None:
    """Raise a ValueError saying why ``model``'s decode step cannot run compiled (see the module docstring)."""
    from mlcore.model import Transformer

    if not isinstance(model, Transformer):
        raise ValueError(f"compiled decoding needs an mlcore Transformer, got {type(model).__name__}")
    if model.training:
        raise ValueError("compiled decoding runs the model in eval mode only: call model.eval() first")
    c = model.config
    if c.attn_backend not in COMPILE_BACKENDS:
        raise ValueError(f"compiled decoding supports attn_backend in {COMPILE_BACKENDS}, got {c.attn_backend!r} "
                         "(mlcore's tiled flash kernel is a Python loop: use it eagerly)")
    if model.rope is not None and getattr(model.rope, "rope_type", "default") == "dynamic":
        raise ValueError("compiled decoding does not support dynamic NTK RoPE scaling: its angles depend on the "
                         "longest position, read on the host every step (decode without compile)")


def bucket_length(needed: int, max_seq_len: int) -> int:
    """The cache length a request of ``needed`` columns compiles for: the next power of two >= max(needed, 64),
    at most ``max_seq_len`` (so requests of similar length share one graph)."""
    return min(max(64, 1 << (needed - 1).bit_length()), max(max_seq_len, needed))


# Inductor options for the step's graph. The generated wrapper checks every external kernel's output size and
# stride, and the alignment of every input (~140 checks per step of an 8-layer model, ~75 us on this CPU): with
# static shapes traced from these very tensors they can only fail on an inductor bug, so they are left out.
INDUCTOR_OPTIONS = {"size_asserts": False, "alignment_asserts": False}

# CPU_OPTIONS: on a CPU the step's wrapper -- the code that allocates the step's buffers, makes ~150 views of
# them and calls each kernel and library matmul in turn -- is generated in C++ rather than Python (inductor's
# ``cpp_wrapper``). In Python each of those calls costs a few microseconds: ~0.25 ms of a 3.5 ms step of the
# 27M Llama in bfloat16 (one thread). Measured per generated token, interleaved in one process: bfloat16 1.13x,
# float32 1.08x faster, the same tokens; cold compile time unchanged (~21 s). CUDA steps keep the Python
# wrapper: their launches are replayed by a CUDA graph in mode="reduce-overhead", and the C++ wrapper is
# unmeasured there.
CPU_OPTIONS = {"cpp_wrapper": True}

# ROW_DOT_OPTIONS: what a batch-1 CPU step (row-dot linears, see mlcore/_row_dot.py) needs on top, unless every
# linear layer of the model reads tiled weights (see _tiled_everywhere).
# - No freezing: constant folding would turn ``weight.float()`` of a frozen bf16 or int8 weight into a float32
#   copy, which the step then reads (2x / 4x the bytes: measured 1.3x / 1.9x slower steps); and no library
#   matmul is left to prepack. The weights stay graph inputs, so in-place edits are seen without recompiling.
# - realize_opcount_threshold=0: inductor otherwise inlines the producer of a row-dot's input (RMSNorm, the
#   embedding lookup, SiLU(gate) * up) into the reduction's inner loop, recomputing it once per weight row;
#   realizing every element-wise result computes each once (buffers of one token: a few KB). Measured on the
#   27M int8 step: 4.3 -> 2.5 ms; float32 and bfloat16 steps 5-15% faster.
ROW_DOT_OPTIONS = {"realize_opcount_threshold": 0}

# TEMPLATE_OPTIONS (defined in mlcore/_gemm_template.py, which the probe shares): a batch-1 CPU step whose linears
# use inductor's C++ GEMM template (gemv_choice "template", bfloat16 on a CPU with AMX). The template applies only
# to a frozen weight, which it prepacks for its micro-GEMM (the decoder freezes such graphs). Only the CPP
# backend is offered, so no autotuning run picks between it and the library kernel from a timing (a choice that
# could change from one compile to the next, and the rounding with it); a matmul the template cannot serve falls
# back to the library kernel (autotune_fallback_to_aten).


# GUARDS_ONCE: before running a compiled graph, dynamo checks its guards: that every module attribute, parameter,
# buffer and cache tensor the trace read is still what it was (type, identity, dtype, shape, flags) -- about 3,500
# checks for an 8-layer model, 0.6-0.8 ms on this CPU, as long as the whole int8 matmul work of the 27M model's
# step. Between two steps of one generation none of that can change: the same model in eval mode, the same
# cache, tokens and positions of the shapes, dtypes and device ``step`` checks. So the first step after
# ``start()`` runs with every guard; later ones skip them (``torch.compiler.set_stance(
# skip_guard_eval_unsafe=True)``, scoped to the call), and ``start()`` re-checks the weights for the next one.
# Where the graph was compiled through GraphCapture (every mode but CUDA graphs), those later steps do not enter
# dynamo at all: see inference/direct_graph.py.


def grad_mode() -> tuple[bool, bool]:
    """What a compiled graph depends on beyond its inputs' metadata: grad mode and inference mode."""
    return torch.is_grad_enabled(), torch.is_inference_mode_enabled()


@functools.cache
def can_skip_guards() -> bool:
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance is not None and "skip_guard_eval_unsafe" in inspect.signature(set_stance).parameters


def without_guards() -> contextlib.AbstractContextManager:
    """The stance that skips guard evaluation (see GUARDS_ONCE); torch < 2.6 has none: guards run every step."""
    if not can_skip_guards():
        return contextlib.nullcontext()
    return torch.compiler.set_stance(skip_guard_eval_unsafe=True)
