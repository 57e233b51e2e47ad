"""``QuantizedLinear``: ``y = x W^T + b`` with ``W`` kept as a ``QuantizedTensor``.

The codes and scales are buffers (``weight_data``, ``weight_scales``, ``weight_zeros``, ``weight_nested_*``),
not parameters: they move with ``.to(device)``, appear in ``state_dict()``, and receive no gradient. A
``model.to(dtype)`` leaves them as stored (their dtypes are part of the format); the bias follows the model.

Which matmul runs (``kernel``):

- ``"int8pack"``: symmetric per-channel (or per-tensor) int8 on CPU, ``aten._weight_int8pack_mm``;
- ``"int4pack"``: int4 on CPU with out_features % 16 == 0 and group size 32..256,
  ``aten._weight_int4pack_mm_for_cpu``;
- ``"dequant"``: everywhere else: dequantize the weight to the activation dtype and call ``F.linear``.

``prefer="auto"`` takes the first fast path that can run, for bfloat16 activations only: with float32 or
float16 activations torch 2.13's CPU kernels are 10-100x slower than with bfloat16 (see ``kernels.py``), so
the fallback runs. ``prefer="int8pack"`` / ``"int4pack"`` forces a fast path for any float activations;
``prefer="dequant"`` forces the fallback. A fast path named in ``prefer`` that cannot run for this weight raises
``ValueError`` at construction; if it stops being possible later (the module moved to a GPU, float64
activations), ``forward`` warns once and falls back to ``"dequant"``. Inputs that need a gradient
(``x.requires_grad``, as in QLoRA) always take the fallback, which autograd understands.

``kernel`` names the path for activations of ``compute_dtype`` (the original weight's dtype, following
``model.to(dtype)``), ``kernel_for(dtype)`` for any dtype, and ``last_kernel`` the path the latest forward took.

Per-call overhead: a fast kernel's arguments (scales in the activation dtype, the repacked int4 codes, the bias)
are prepared once per activation dtype and reused while the buffers are the same tensors with the same version
counters, so a decode step pays one kernel call and two reshapes. ``concat_out_features(layers)`` stacks
int8 / int4 layers that share an input (q, k, v; gate, up) into one layer whose rows are theirs, for
:class:`mlcore.attention.fused_linear.LinearFusion`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlcore._row_dot import row_dot_linear, traced_single_row
from mlcore._tensor_state import tensor_state_key

from .api import dequantize, dequantize_unchecked, quantize
from .kernels import (
    AUTO_FAST_DTYPES,
    KERNEL_ALIGN,
    KERNELS,
    aligned,
    int4pack_mm_op,
    int4pack_weight,
    int8_channel_scales,
    int8pack_mm_op,
    unavailable_reason,
)
from .tensor import (
    FLOAT_DTYPES,
    NestedScales,
    QuantizedTensor,
    check_layout,
    metadata_from_tensor,
    metadata_mismatch,
    metadata_to_tensor,
)

_FAST = ("int8pack", "int4pack")
# the state-dict entry (after the module's prefix) that holds the weight's format, QuantizedTensor.metadata()
FORMAT_KEY = "weight_format"




class QuantizedLinear(nn.Module):
    """A linear layer (in_features -> out_features) whose weight (out, in) is stored quantized."""

    def __init__(self, weight: QuantizedTensor, bias: torch.Tensor | None = None, *, prefer: str = "auto") -> None:
        super().__init__()
        if not isinstance(weight, QuantizedTensor):
            raise ValueError(f"weight: expected a QuantizedTensor, got {type(weight).__name__}")
        check_layout(weight)
        if len(weight.shape) != 2:
            raise ValueError(f"weight.shape: expected (out_features, in_features), got {weight.shape}")
        self.out_features, self.in_features = weight.shape
        if bias is not None and not isinstance(bias, torch.Tensor):
            raise ValueError(f"bias: expected a torch.Tensor or None, got {type(bias).__name__}")
        if bias is not None and tuple(bias.shape) != (self.out_features,):
            raise ValueError(f"bias.shape: expected ({self.out_features},), got {tuple(bias.shape)}")
        if bias is not None and not bias.dtype.is_floating_point:  # nn.Linear's bias is a float parameter too
            raise ValueError(f"bias.dtype: expected a floating-point tensor, got {bias.dtype}")
        if prefer not in ("auto",) + KERNELS:
            raise ValueError(f"prefer: expected 'auto' or one of {KERNELS}, got {prefer!r}")
        if prefer in _FAST:
            reason = unavailable_reason(prefer, weight)
            if reason is not None:
                raise ValueError(f"prefer: {prefer!r} cannot run for this weight: {reason}")
        self.prefer = prefer
        self._meta = weight.metadata()
        self._shape, self._dtype = tuple(weight.shape), weight.dtype
        self._kernels: dict[tuple[str, torch.dtype], str] = {}  # (device type, activation dtype) -> kernel
        self.last_kernel: str | None = None  # the path the latest forward took
        self._keys = tuple(weight.tensors())
        for key, t in weight.tensors().items():
            # codes read by the int8 kernel must be aligned (kernels.aligned: a file's tensors segfault it)
            self.register_buffer("weight_" + key, aligned(t) if key == "data" and t.device.type == "cpu" else t)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.register_buffer("_int4_packed", None, persistent=False)
        self.register_buffer("_int4_sz", None, persistent=False)
        self._int4_key: tuple[Any, ...] | None = None
        # an empty float tensor whose dtype follows model.to(dtype): the activation dtype the layer expects
        self.register_buffer("_compute_probe", torch.empty(0, dtype=weight.dtype, device=weight.device),
                             persistent=False)
        # the fast kernel's scales (int8) or scales-and-zeros (int4) in the activation dtype, for traced graphs
        self.register_buffer("_traced_scales", None, persistent=False)
        self._traced_key: tuple[Any, ...] | None = None
        self._warned = False
        self._prepared: dict[torch.dtype, tuple[tuple[int, ...], list[Any], Any]] = {}
        self._stacked_from: list[QuantizedLinear] = []  # the layers this one stacks (concat_out_features)

    @classmethod
    def concat_out_features(cls, layers: list[QuantizedLinear]) -> QuantizedLinear | None:
        """One layer computing ``[y_1 | y_2 | ...]`` for layers that read the same input, or None where stacking
        their rows is not valid. int8 (per channel or group) and int4 (per group) keep one scale (and zero) per
        row and group, so their codes, scales and zeros stack along out_features and each output is exactly
        that layer's; NF4 / FP4 blocks run across rows and their double quantization is per tensor: refused."""
        first = layers[0]
        meta = first._meta
        if (meta["scheme"] not in ("int8", "int4") or meta["granularity"] not in ("channel", "group")
                or meta["nested_blocksize"] is not None):
            return None
        same = {(lay.prefer, lay.in_features, lay._dtype, lay.compute_dtype, lay.bias is None,
                 repr(sorted((k, v) for k, v in lay._meta.items() if k != "shape"))) for lay in layers}
        if len(same) != 1:
            return None
        views = [lay._view() for lay in layers]
        qt = QuantizedTensor(
            data=torch.cat([v.data for v in views]), scales=torch.cat([v.scales for v in views]),
            zeros=None if views[0].zeros is None else torch.cat([v.zeros for v in views if v.zeros is not None]),
            scheme=meta["scheme"], shape=(sum(lay.out_features for lay in layers), first.in_features),
            dtype=first._dtype, group_size=meta["group_size"], granularity=meta["granularity"],
            symmetric=meta["symmetric"])
        bias = None if first.bias is None else torch.cat([lay.bias.detach() for lay in layers if lay.bias is not None])
        try:
            fused = cls(qt, bias, prefer=first.prefer)
        except ValueError:  # e.g. a stacked shape a forced kernel cannot take: keep the layers separate
            return None
        fused._compute_probe = first._compute_probe
        fused._stacked_from = list(layers)  # their last_kernel reports the path the stacked layer took
        return fused

    def fusion_source_tensors(self) -> list[torch.Tensor | None]:
        """The tensors a stacked copy is built from (see ``concat_out_features``); a change to any (a new
        tensor, or an in-place write) makes the copy stale."""
        return [self._buffers["weight_" + k] for k in self._keys] + [self.bias, self._compute_probe]

    @classmethod
    def from_linear(cls, linear: nn.Linear, scheme: str, *, prefer: str = "auto", **options: Any) -> QuantizedLinear:
        """Quantize ``linear.weight`` with ``quantize(w, scheme, **options)``; the bias is kept as it is."""
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        qt = quantize(linear.weight.detach(), scheme, **options)
        return cls(qt, linear.bias, prefer=prefer)

    @property
    def quantized_weight(self) -> QuantizedTensor:
        """The stored weight as a QuantizedTensor (sharing the buffers)."""
        return QuantizedTensor.from_state_dict({k: getattr(self, "weight_" + k) for k in self._keys}, self._meta)

    def _view(self) -> QuantizedTensor:
        """The buffers as a QuantizedTensor without re-checking them (they were checked at construction)."""
        t, m = self._buffers, self._meta
        nested = None
        if m["nested_blocksize"] is not None:
            nested = NestedScales(t["weight_nested_absmax"], t["weight_nested_offset"], m["nested_blocksize"])
        return QuantizedTensor(data=t["weight_data"], scales=t["weight_scales"], zeros=t.get("weight_zeros"),
                               scheme=m["scheme"], shape=self._shape, dtype=self._dtype, group_size=m["group_size"],
                               granularity=m["granularity"], symmetric=m["symmetric"], nested=nested)

    @property
    def quant_metadata(self) -> dict[str, Any]:
        """JSON-able description of the layer (what ``save_quantized`` writes), ``prefer`` included: a layer
        forced onto a kernel (or onto the exact ``"dequant"`` path) computes the same after a round trip."""
        return {**self._meta, "in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "prefer": self.prefer}

    # -- state dict: the format travels with the codes ------------------------------------------------

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        """The buffers and bias, plus ``weight_format``: the weight's metadata (scheme, shape, dtype, block /
        group size, granularity, symmetric, double-quant block size) as a uint8 tensor of JSON, because NF4 and
        FP4 codes (or int8 codes from weights of two dtypes) have identical shapes and dtypes: without it an
        NF4 state dict loads into an FP4 layer without a word and computes another weight."""
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + FORMAT_KEY] = metadata_to_tensor(self._meta)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        """Refuse (ValueError) a state dict whose ``weight_format`` differs from this layer's, before any of
        this layer's tensors is copied. A state dict without the entry (written before it existed) loads as
        before: its codes and scales are only checked for shape and dtype, by torch."""
        key = prefix + FORMAT_KEY
        if key in state_dict:
            stored = metadata_from_tensor(state_dict[key], f"state_dict[{key!r}]")
            diff = metadata_mismatch(stored, self._meta)
            if diff:
                raise ValueError(f"state_dict[{key!r}]: the state dict holds a {stored.get('scheme')!r} weight "
                                 f"that this {self._meta['scheme']!r} QuantizedLinear cannot read: "
                                 f"{'; '.join(diff)} (stored != this layer); build the layer with the same "
                                 "quantize() options, or use load_quantized, which builds it from the file")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if key in unexpected_keys:  # not a buffer: torch lists it as unexpected
            unexpected_keys.remove(key)

    def dequantized_weight(self) -> torch.Tensor:
        """The weight (out, in) in its original dtype."""
        return dequantize(self.quantized_weight)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The activation dtype the layer expects: the original weight's, then whatever ``.to(dtype)`` set."""
        return self._compute_probe.dtype

    @property
    def kernel(self) -> str:
        """The path ``forward`` takes for activations of ``compute_dtype``: "int8pack", "int4pack" or "dequant"."""
        return self.kernel_for(self.compute_dtype)

    def kernel_for(self, dtype: torch.dtype) -> str:
        """The path ``forward`` takes for activations of ``dtype`` (on the weight's device, no gradient)."""
        key = (self._buffers["weight_data"].device.type, dtype)
        if key not in self._kernels:
            qt = self._view()
            if self.prefer == "dequant" or dtype not in FLOAT_DTYPES:
                candidates: tuple[str, ...] = ()
            elif self.prefer in _FAST:
                candidates = (self.prefer,)
            else:
                candidates = _FAST if dtype in AUTO_FAST_DTYPES else ()
            usable = [k for k in candidates if unavailable_reason(k, qt) is None]
            self._kernels[key] = usable[0] if usable else "dequant"
        return self._kernels[key]

    def _int4_cache(self, qt: QuantizedTensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Repacked codes and scales-and-zeros for the int4 kernel, rebuilt when a buffer changed in place."""
        key = tensor_state_key(qt.tensors().values())
        if self._int4_key != key or self._int4_packed is None:
            self._int4_packed, self._int4_sz = int4pack_weight(qt)
            self._int4_key = key
        return self._int4_packed, self._int4_sz

    def _fast_args(self, dtype: torch.dtype) -> tuple[str, torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
        """(kernel, weight, scales (int8) or scales-and-zeros (int4) in ``dtype``, bias) for a CPU fast kernel
        with ``dtype`` activations, made once and reused while the buffers are unchanged; None when the
        fallback runs."""
        srcs = [self._buffers["weight_" + k] for k in self._keys] + [self.bias]
        key = tensor_state_key(srcs)
        hit = self._prepared.get(dtype)
        if hit is not None and hit[0] == key:
            return hit[2]
        kernel = self.kernel_for(dtype)
        self.prepare_traced()
        args: Any = None
        if kernel != "dequant":
            qt = self._view()
            bias = None if self.bias is None else self.bias.detach().to(dtype)
            scales = self._buffers["_traced_scales"]  # current for the compute dtype (prepared just above)
            if kernel == "int8pack":
                if scales is None or scales.dtype != dtype:
                    scales = int8_channel_scales(qt).to(dtype)
                args = (kernel, aligned(qt.data.contiguous()), scales, bias)
            else:
                packed, sz = self._int4_cache(qt)
                args = (kernel, packed, scales if scales is not None and scales.dtype == dtype else sz.to(dtype),
                        bias)
        self._prepared[dtype] = (key, srcs, args)  # srcs: keeps the ids in the key from being reused
        return args

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) -> (..., out_features)."""
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x.shape: expected (..., {self.in_features}), got {tuple(x.shape)}")
        if not x.dtype.is_floating_point:
            # the weight would be cast to x's dtype: integer activations would truncate it (to zeros for |w| < 1)
            # and run an integer matmul; nn.Linear refuses a dtype mismatch, so refuse too
            raise ValueError(f"x.dtype: expected a floating-point tensor, got {x.dtype}")
        if torch.compiler.is_compiling():
            return self._forward_traced(x)
        if x.device.type == "cpu" and not (x.requires_grad and torch.is_grad_enabled()):
            fast = self._fast_args(x.dtype)
            if fast is not None:  # the prepared fast kernel: one call between two reshapes
                kernel, w, aux, bias = fast
                if self.last_kernel != kernel:
                    self.last_kernel = kernel
                for src in self._stacked_from:  # a plain attribute: write it without Module.__setattr__
                    src.__dict__["last_kernel"] = kernel
                return self._packed_matmul(x, kernel, w, aux, bias, align=True)
        return self._forward_general(x)

    def prepare_traced(self) -> None:
        """Make the buffers a traced graph reads current (call before tracing and before running a graph).

        The CPU kernels take their scales (int8: (N,); int4: scales-and-zeros (K / g, N, 2), with codes
        repacked by ``aten._convert_weight_to_int4pack_for_cpu``) in the activation dtype. Made inside a graph,
        they reach the kernel as unmaterialised nodes, which inductor's lowerings of ``aten._weight_int8pack_mm``
        and ``_weight_int4pack_mm_for_cpu`` refuse (torch 2.13), so the graph would call the kernel through the
        ``mlcore::int8pack_mm`` / ``int4pack_mm`` custom ops, at about 20 us of Python dispatch per call. This
        keeps them as buffers (``_traced_scales``; int4's repacked codes are the eager cache's
        ``_int4_packed``), rebuilt when a weight buffer or the compute dtype changed; a graph whose activations
        have that dtype calls the aten kernel directly. ``CompiledDecoder.start`` and every eager fast-path call
        refresh them; a graph you compile yourself sees in-place edits of the weight buffers after one of those."""
        dtype = self.compute_dtype
        kernel = self.kernel_for(dtype)
        if kernel not in _FAST:
            self._buffers["_traced_scales"], self._traced_key = None, None
            return
        data = self._buffers["weight_data"]
        if kernel == "int8pack" and data.data_ptr() % KERNEL_ALIGN:  # a graph reads the buffer itself: align it
            self._buffers["weight_data"] = aligned(data)
        qt = self._view()
        key = (dtype, *tensor_state_key(qt.tensors().values()))
        if key != self._traced_key:
            if kernel == "int8pack":
                self._buffers["_traced_scales"] = int8_channel_scales(qt).to(dtype)
            else:  # int4pack: the repacked codes (the eager cache's buffer) and scales-and-zeros in ``dtype``
                self._buffers["_traced_scales"] = self._int4_cache(qt)[1].to(dtype)
            self._traced_key = key

    def _forward_traced(self, x: torch.Tensor) -> torch.Tensor:
        """Inside ``torch.compile``: the kernel :meth:`kernel_for` picks for this dtype, without the eager caches
        (they key on tensor versions, which dynamo cannot read); the packed kernels read ``_traced_scales`` when
        they have the activation dtype (see :meth:`prepare_traced`), else the graph computes them and calls the
        kernels through the custom ops."""
        kernel = self.kernel_for(x.dtype) if x.device.type == "cpu" else "dequant"
        scales = self._buffers["_traced_scales"]
        if kernel in _FAST and scales is not None and scales.dtype == x.dtype:
            if kernel == "int8pack" and traced_single_row(x):  # one decode row: inductor's own int8 reduction
                return row_dot_linear(x, self._buffers["weight_data"], self.bias, scales)
            weight = self._buffers["weight_data" if kernel == "int8pack" else "_int4_packed"]
            return self._packed_matmul(x, kernel, weight, scales, None if self.bias is None else self.bias.to(x.dtype))
        return self._run(x, kernel, int4pack_weight)

    def _forward_general(self, x: torch.Tensor) -> torch.Tensor:
        """Any device, dtype and grad mode: picks the kernel per call (the dequantize fallback included)."""
        kernel = self.kernel_for(x.dtype) if x.device.type == "cpu" else "dequant"
        if self.prefer in _FAST and kernel == "dequant" and not self._warned:
            reason = unavailable_reason(self.prefer, self._view()) or f"activations {x.dtype} on {x.device}"
            warnings.warn(f"QuantizedLinear: prefer={self.prefer!r} cannot run ({reason}); "
                          "using dequantize-then-matmul", stacklevel=3)
            self._warned = True
        if x.requires_grad and torch.is_grad_enabled():
            kernel = "dequant"  # autograd knows F.linear, not the packed kernels
        self.last_kernel = kernel
        for src in self._stacked_from:
            src.__dict__["last_kernel"] = kernel
        return self._run(x, kernel, self._int4_cache)

    def _run(self, x: torch.Tensor, kernel: str,
             int4_weight: Callable[[QuantizedTensor], tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """``kernel`` on x (..., in) -> (..., out); ``int4_weight(qt)`` gives the int4 kernel's repacked weight."""
        bias = None if self.bias is None else self.bias.to(x.dtype)
        qt = self._view()
        if kernel == "dequant":
            return F.linear(x, dequantize_unchecked(qt).to(x.dtype), bias)
        # traced, the scales computed here would reach inductor's lowering unmaterialised: go through custom ops
        traced = torch.compiler.is_compiling()
        if kernel == "int8pack":  # eager: the codes aligned for the int8 kernel (kernels.aligned)
            weight, aux = qt.data if traced else aligned(qt.data), int8_channel_scales(qt)
        else:
            weight, aux = int4_weight(qt)
        return self._packed_matmul(x, kernel, weight, aux.to(x.dtype), bias, opaque=traced, align=not traced)

    def _packed_matmul(self, x: torch.Tensor, kernel: str, weight: torch.Tensor, aux: torch.Tensor,
                       bias: torch.Tensor | None, *, opaque: bool = False, align: bool = False) -> torch.Tensor:
        """x (..., in) -> (..., out) through torch's CPU kernel ``kernel`` on the packed ``weight``, with ``aux``
        the int8 scales (N,) or int4 scales-and-zeros (K / g, N, 2) in x's dtype; ``opaque``: through the
        ``mlcore::`` custom ops (see ``kernels.py``); ``align`` (eager only): copy a misaligned ``x`` first, which the
        int8 kernel would crash on (``kernels.aligned``; the callers hand it an aligned int8 ``weight``)."""
        x2 = x.reshape(-1, self.in_features).contiguous()
        if kernel == "int8pack" and align:
            x2 = aligned(x2)
        if kernel == "int8pack":
            y = (int8pack_mm_op if opaque else torch.ops.aten._weight_int8pack_mm)(x2, weight, aux)
        else:
            y = (int4pack_mm_op if opaque else torch.ops.aten._weight_int4pack_mm_for_cpu)(
                x2, weight, self._meta["group_size"], aux)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if bias is None else y + bias

    def _apply(self, fn: Any, recurse: bool = True) -> QuantizedLinear:
        """Let ``.to(device)`` move the quantized buffers but keep their dtypes (``.to(dtype)`` must not
        round float32 scales to bf16 or turn codes into floats)."""
        stored = {k: v for k, v in self._buffers.items() if v is not None and k != "_compute_probe"}
        # _traced_scales keeps its dtype too: prepare_traced rebuilds it from weight_scales for the new dtype
        super()._apply(fn, recurse)
        for name, old in stored.items():
            new = self._buffers[name]
            if new is not None and new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        return self

    def extra_repr(self) -> str:
        m = self._meta
        detail = {"int8": f"granularity={m['granularity']}, symmetric={m['symmetric']}",
                  "int4": f"group_size={m['group_size']}"}.get(
            m["scheme"], f"blocksize={m['group_size']}, double_quant={m['nested_blocksize'] is not None}")
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"scheme={m['scheme']}, {detail}, kernel={self.kernel}")
