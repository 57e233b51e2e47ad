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

Layout. A batch-1 matmul reads every weight once per token, and on a CPU the memory layout decides how fast.
Measured on this project's 2-core EPYC, one thread, weights cold:

- float32: a weight stored column-major, (in, out)-contiguous, with ``out_features > in_features`` reads at
  16-18 GB/s against 9-10 GB/s for ``nn.Linear``'s row-major weight (MKL takes its sgemv "N" path instead of
  the per-row dot products of "T"); with in > out column-major was slower. :func:`decode_layout` applies the rule.
- bfloat16: oneDNN's own blocked layout (``torch.ops.mkldnn._reorder_linear_weight``, the packing inductor uses
  for frozen CPU linears) reads at ~11 GB/s against ~6 GB/s for the plain bf16 ``F.linear``, for every shape
  tried, with bit-identical results (the same oneDNN kernel, fed a pre-packed weight).

Every copy built here is stored in that layout, so stacking costs nothing extra for it; a *single* layer
(``fusion((o_proj,))``) gets a copy only when its layout would change, which is how an output projection or the
tied vocabulary head of a small model reads at the faster rate. The results are the same dot products (a
float32 GEMV may sum them in another order: float32 rounding level).

Cost: the copy doubles the memory of those weights while it is held; :meth:`LinearFusion.release` frees it, and
it is dropped as soon as the owner runs in training or grad mode.

Blind spot: a write through ``.data`` (``p.data.mul_(2)``, ``p.data.copy_(w)``) bypasses the version counter, as
it bypasses autograd's checks, so a copy built before it is still used after it. Write under
``torch.no_grad()`` on the parameter itself (what optimizers, ``load_state_dict`` and ``nn.init`` do), or call
:func:`release_all` on the model after such a write.

While ``torch.compile`` traces, plain ``nn.Linear`` groups are handed out as a
:class:`~mlcore._row_dot.RowDotLinear` over the layers' own weights: a single-row CPU step becomes
inductor-generated row dot products (faster than any library GEMV on these shapes), other traces the copy above.
Once a batch-1 CPU ``CompiledDecoder`` has started on the model (``trace_tiles``), every eager call also keeps
each layer's weight as :func:`~mlcore._row_dot.tiled_weight` tiles, which those row dots read instead (faster
again; one more copy of the weights, dropped with the rest by :meth:`LinearFusion.release` or training).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _module

from mlcore._onednn import onednn_bf16_available
from mlcore._row_dot import RowDotLinear, tiled_weight
from mlcore._tensor_state import normal_tensors, tensor_state_key

__all__ = ["LinearFusion", "decode_layout", "prepare_linear", "release_all"]


def decode_layout(weight: Tensor) -> Tensor:
    """``weight`` (out, in) in the memory layout its batch-1 matmul reads fastest (see the module docstring).

    Column-major (``weight.t().contiguous().t()``: same shape and values, strides ``(1, out)``) for a float32
    CPU weight with ``out > in``; the tensor itself otherwise.
    """
    if weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.shape[0] > weight.shape[1]:
        return weight.t().contiguous().t()
    return weight


def prepare_linear(weight: Tensor, bias: Tensor | None, *, single: bool = False) -> Callable[[Tensor], Tensor] | None:
    """``x -> F.linear(x, weight, bias)`` with ``weight`` (out, in) held in its fastest decode layout.

    ``single``: the weight is one layer's own (not a stack); then None means "call the layer itself", returned
    when no faster layout exists, so that no copy is made for nothing.
    """
    weight = weight.detach()
    bias = None if bias is None else bias.detach()
    if weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and onednn_bf16_available():
        try:
            return _OneDnnBf16Call(weight, bias)
        except RuntimeError:  # an older or unusual oneDNN build: the plain path is always right
            pass
    laid = decode_layout(weight)
    if single and laid is weight:
        return None
    return _LinearCall(laid, bias)


def _layout(tensors: Sequence[Tensor | None]) -> list[tuple | None]:
    """Shape and dtype of each tensor (None for a missing one): whether one list can be refilled from another."""
    return [None if t is None else (tuple(t.shape), t.dtype) for t in tensors]


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
        # trace_tiles: set by a batch-1 CPU CompiledDecoder (inference/compiled.py); eager calls then also keep
        # each plain layer's weight as mlcore._row_dot.tiled_weight tiles, which its traced step reads
        self.trace_tiles = False
        # row_dots: whether a traced single-row CPU step computes these layers as row dots (mlcore._row_dot) or
        # calls the library matmul; set by that decoder from inference/gemv_choice.py (chosen per machine)
        self.row_dots = True
        self._tiles: list[Tensor | None] | None = None
        self._tiles_key: tuple[int, ...] | None = None

    def release(self) -> None:
        """Drop the stacked weight and the tiles (rebuilt on the next eligible call)."""
        self._key, self._refs, self._fn = None, [], None
        self._tiles, self._tiles_key = None, None

    def tensors(self) -> list[Tensor]:
        """The tensors of the current copy, which a traced graph may read as inputs (the copy is rebuilt only
        by an eager call, so they keep their identity between a compiled model's decode steps)."""
        tiles = [t for t in self._tiles or () if t is not None]
        fn = self._fn
        if isinstance(fn, nn.Module):
            return [*fn.parameters(), *fn.buffers(), *tiles]
        if isinstance(fn, (_LinearCall, _OneDnnBf16Call)):
            return [t for t in (fn.weight, fn.bias) if t is not None] + tiles
        return tiles

    def set_trace_tiles(self, on: bool) -> None:
        """Keep tiles from eager calls from now on (``on``), or stop and drop the ones held."""
        self.trace_tiles = on
        if not on:
            self._tiles, self._tiles_key = None, None

    def set_row_dots(self, on: bool) -> None:
        """Whether a traced single-row CPU step computes these layers as row dots (``on``) or calls the library."""
        self.row_dots = on

    def tiled_layers(self) -> int:
        """How many of the group's layers hold tiles for a traced step (see ``trace_tiles``)."""
        return sum(t is not None for t in self._tiles or ())

    def run_layer(self, layer: nn.Module, x: Tensor, owner_training: bool) -> Tensor:
        """``layer(x)`` for a single layer, through its faster-layout copy when one exists (else the layer)."""
        fast = self((layer,), owner_training)
        return fast(x) if fast is not None else layer(x)

    def __deepcopy__(self, memo: dict) -> LinearFusion:
        return LinearFusion()  # a cache of derived tensors: a copied model rebuilds its own (and oneDNN's packed
        # tensors cannot be deep-copied)

    def __getstate__(self) -> dict:
        return {}  # pickling a model carries no cached copies

    def __setstate__(self, state: dict) -> None:
        self.__init__()  # a fresh holder: every attribute, none of the copies

    def __call__(self, modules: Sequence[nn.Module], owner_training: bool) -> Callable[[Tensor], Tensor] | None:
        if owner_training or torch.is_grad_enabled():
            if self._fn is not None:
                self.release()  # training: never hold a second copy of weights that are changing
            return None
        if torch.compiler.is_compiling():
            # dynamo cannot read the version counters the key is made of; a copy an eager call of this forward
            # built (the prefill, just before) is current. A dense one traces as a plain F.linear, a stacked
            # QuantizedLinear as its own traced forward; oneDNN's packed tensor cannot be traced, so its plain
            # (stacked) weight is handed over instead, which inductor's freezing packs again
            fallback = self._fn.plain if isinstance(self._fn, _OneDnnBf16Call) else (
                self._fn if isinstance(self._fn, (_LinearCall, nn.Module)) else None)
            if self.row_dots and all(type(m) is nn.Linear and _plain(m) for m in modules):  # single-row CPU: row dots
                tiles = self._tiles if self._tiles is not None and len(self._tiles) == len(modules) else None
                return RowDotLinear([m.weight for m in modules], [m.bias for m in modules], fallback, tiles)
            return fallback
        kind = type(modules[0])
        if (_module._global_forward_hooks or _module._global_forward_pre_hooks
                or any(type(m) is not kind or not _plain(m) for m in modules)):
            return self._unfused()
        linear = kind is nn.Linear
        if not linear and not hasattr(kind, "concat_out_features"):
            return self._unfused()
        srcs = _tensors(modules, linear)
        key = tensor_state_key(srcs)
        if key != self._key:
            self._build(modules, srcs, linear)
            self._key = key
        if self.trace_tiles and linear and key != self._tiles_key:
            self._build_tiles(srcs)
            self._tiles_key = key
        return self._fn

    def _unfused(self) -> None:
        """The layers must run as themselves now (a LoRA wrapper, a hook): drop any copy made for them before. A
        traced step cannot check the layers and reads the copy the eager call before it kept (see ``__call__``):
        one kept from before ``apply_lora`` made the compiled step decode with the base weights alone."""
        self.release()

    def _build_tiles(self, srcs: list[Tensor | None]) -> None:
        """Each layer's weight as ``tiled_weight`` tiles for a traced batch-1 CPU step (None where it has none).
        The step reads the weights as they were at this (eager) call: the prefill of each generation."""
        old, self._tiles = self._tiles, None
        if any(t is not None and t.is_inference() for t in srcs):
            return  # no version counter: a change could not be seen
        with normal_tensors():  # refilled in place by later calls, which may run outside inference mode
            tiles = [tiled_weight(w) for w in srcs[0::2] if w is not None]
        if old is not None and _layout(old) == _layout(tiles):
            for a, b in zip(old, tiles):  # edited weights: refill the same tensors, which a compiled graph reads
                if a is not None:
                    a.copy_(b)
            tiles = old
        self._tiles = tiles if any(t is not None for t in tiles) else None

    def _build(self, modules: Sequence[nn.Module], srcs: list[Tensor | None], linear: bool) -> None:
        self._refs, self._fn = srcs, None
        if any(t is not None and t.is_inference() for t in srcs):
            return  # inference tensors keep no version counter: changes could not be seen, so do not fuse
        if len(modules) == 1:  # nothing to stack: worth a copy only for a faster layout
            if linear:
                self._fn = prepare_linear(srcs[0], srcs[1], single=True)
            return
        if linear:
            ws, bs = srcs[0::2], srcs[1::2]
            if len({(w.dtype, w.device, w.shape[1]) for w in ws}) != 1:
                return
            has_bias = {b is not None for b in bs}
            if len(has_bias) != 1 or (True in has_bias and len({(b.dtype, b.device) for b in bs}) != 1):
                return  # some with bias and some without, or mixed dtypes: leave them separate
            weight = torch.cat([w.detach() for w in ws], dim=0)  # (sum out, in)
            bias = torch.cat([b.detach() for b in bs]) if True in has_bias else None
            self._fn = prepare_linear(weight, bias)
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


class _OneDnnBf16Call:
    """``F.linear`` in bfloat16 through oneDNN with the weight pre-packed in oneDNN's blocked layout.

    Falls back to ``F.linear`` on the plain weight for any input it was not checked on (another dtype, or a
    non-contiguous view, where ``F.linear`` itself may take another kernel)."""

    __slots__ = ("weight", "bias", "packed", "plain")

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        self.weight, self.bias = weight, bias
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1)  # batch-size hint 1: decoding
        self.plain = _LinearCall(weight, bias)  # what a traced graph calls (see LinearFusion.__call__)

    def __call__(self, x: Tensor) -> Tensor:
        if x.dtype != torch.bfloat16 or not x.is_contiguous() or (
                self.bias is not None and self.bias.dtype != torch.bfloat16):
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def release_all(model: nn.Module) -> int:
    """Drop every fused / re-laid-out weight copy held in ``model`` (rebuilt from the layers on the next eval
    call); returns how many holders were cleared. Needed only after writes the version counter cannot see."""
    holders = [v for m in model.modules() for v in vars(m).values() if isinstance(v, LinearFusion)]
    for holder in holders:
        holder.release()
    return len(holders)

