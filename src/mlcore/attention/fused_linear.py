"""Inference-time fusion of linear layers that read the same input: one matmul instead of several.

Q, K and V are three projections of one input, and so are SwiGLU's gate and up:

    [q | k | v] = x [W_q; W_k; W_v]^T (+ [b_q; b_k; b_v])        W_* stacked along out_features

Each output element is still the dot product of ``x`` with one row of one matrix, so the values are those of the
separate layers; a batch-1 decode step pays one GEMV (and one Python/dispatch round trip) instead of three.
This matters on a CPU, where a small model's decode step is dominated by per-op overhead, not by the matmuls
(gpt-fast and vLLM fuse the same way, at load time; here it happens lazily and is undone by nothing: the
separate layers stay the source of truth).

:class:`LinearFusion` builds the stacked weight on first use and keeps it while the source tensors are the same
objects at the same address with the same version counter (``tensor._version`` grows with every in-place write:
an optimizer step, ``load_state_dict``, ``copy_``). It is used only where it cannot change behaviour:

- in eval mode with gradients off (no autograd graph needs the separate parameters);
- on plain ``nn.Linear`` layers (exact type, no hooks, ``forward`` not patched), or on layers of one type that
  offer ``concat_out_features(layers)`` (``mlcore.quant.QuantizedLinear`` for the schemes where stacking rows
  is valid); a LoRA wrapper, a hooked or a parametrized layer keeps its own forward.

Layout. On a CPU in float32, a batch-1 matmul whose weight does not fit in cache reads it much faster when the
weight is stored column-major, (in, out)-contiguous, and ``out_features > in_features``: measured on this
project's 2-core EPYC, one thread, weights cold, a 2816x512 GEMV ran at 16-18 GB/s against 9-10 GB/s for the
row-major ``nn.Linear`` weight (MKL takes its sgemv "N" path instead of the per-row dot products of "T"); a
1408 -> 512 projection (in > out) ran slower column-major, and bfloat16 ran slower too. :func:`decode_layout`
applies that rule to every copy built here, so the stacked copy costs nothing extra for it; a *single* layer
(``fusion((lm_head,))``) gets a copy only when its layout would change, which is how the tied output head of a
small model reads its (vocab, d_model) matrix at the faster rate. Values are the same dot products (the
summation order inside the BLAS kernel may differ, at float32 rounding level).

Cost: the copy doubles the memory of those weights while it is held; :meth:`LinearFusion.release` frees it, and
it is dropped as soon as the owner runs in training or grad mode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _module

from mlcore._tensor_state import tensor_state_key

__all__ = ["LinearFusion", "decode_layout"]


def decode_layout(weight: Tensor) -> Tensor:
    """``weight`` (out, in) in the memory layout its batch-1 matmul reads fastest (see the module docstring).

    Column-major (``weight.t().contiguous().t()``: same shape and values, strides ``(1, out)``) for a float32
    CPU weight with ``out > in``; the tensor itself otherwise.
    """
    if weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.shape[0] > weight.shape[1]:
        return weight.t().contiguous().t()
    return weight


def _plain(m: nn.Module) -> bool:
    """No hooks and no patched forward: calling the module would run only its class's forward."""
    return not (m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__)


def _tensors(modules: Sequence[nn.Module], linear: bool) -> list[Tensor | None]:
    if linear:  # the parameter dict directly: Module.__getattr__ costs a few microseconds per decode step
        return [t for m in modules for t in (m._parameters["weight"], m._parameters["bias"])]
    return [t for m in modules for t in m.fusion_source_tensors()]




class LinearFusion:
    """One cached stacked linear for a fixed group of layers sharing an input (see the module docstring).

    ``fusion(layers)`` returns a callable ``x (..., in) -> (..., sum of out_features)`` or None when the layers
    must run separately (training, grad mode, wrapped / hooked / mixed layers). With one layer it returns a
    callable only when :func:`decode_layout` gives that layer's weight a faster layout, else None (no copy).
    """

    def __init__(self) -> None:
        self._key: tuple[int, ...] | None = None
        self._refs: list[Tensor | None] = []  # keeps the sources alive, so their ids stay theirs
        self._fn: Callable[[Tensor], Tensor] | None = None

    def release(self) -> None:
        """Drop the stacked weight (it is rebuilt on the next eligible call)."""
        self._key, self._refs, self._fn = None, [], None

    def __call__(self, modules: Sequence[nn.Module], owner_training: bool) -> Callable[[Tensor], Tensor] | None:
        if owner_training or torch.is_grad_enabled():
            if self._fn is not None:
                self.release()  # training: never hold a second copy of weights that are changing
            return None
        if torch.compiler.is_compiling() or _module._global_forward_hooks or _module._global_forward_pre_hooks:
            return None
        kind = type(modules[0])
        if any(type(m) is not kind or not _plain(m) for m in modules):
            return None
        linear = kind is nn.Linear
        if not linear and not hasattr(kind, "concat_out_features"):
            return None
        srcs = _tensors(modules, linear)
        key = tensor_state_key(srcs)
        if key != self._key:
            self._build(modules, srcs, linear)
            self._key = key
        return self._fn

    def _build(self, modules: Sequence[nn.Module], srcs: list[Tensor | None], linear: bool) -> None:
        self._refs, self._fn = srcs, None
        if any(t is not None and t.is_inference() for t in srcs):
            return  # inference tensors keep no version counter: changes could not be seen, so do not fuse
        if len(modules) == 1:  # nothing to stack: worth a copy only for a faster layout
            weight = srcs[0]
            if linear and weight is not None and decode_layout(weight) is not weight:
                self._fn = _LinearCall(decode_layout(weight.detach()), srcs[1])
            return
        if linear:
            ws, bs = srcs[0::2], srcs[1::2]
            if len({(w.dtype, w.device, w.shape[1]) for w in ws}) != 1:
                return
            has_bias = {b is not None for b in bs}
            if len(has_bias) != 1 or (True in has_bias and len({(b.dtype, b.device) for b in bs}) != 1):
                return  # some with bias and some without, or mixed dtypes: leave them separate
            weight = decode_layout(torch.cat([w.detach() for w in ws], dim=0))  # (sum out, in)
            bias = torch.cat([b.detach() for b in bs]) if True in has_bias else None
            self._fn = _LinearCall(weight, bias)
            return
        fused: Any = type(modules[0]).concat_out_features(list(modules))
        self._fn = None if fused is None else fused


class _LinearCall:
    """``F.linear`` with fixed stacked weight and bias."""

    __slots__ = ("weight", "bias")

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        self.weight, self.bias = weight, bias

    def __call__(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)
