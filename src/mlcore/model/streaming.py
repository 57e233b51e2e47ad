"""Fill a model built on the meta device tensor by tensor, quantizing linear layers as their weights arrive.

``build_on_meta(Transformer, config)`` allocates no weights: every parameter is a shape and a dtype on the
meta device. ``stream_into`` then reads one checkpoint tensor at a time from a ``TensorSource`` (a safetensors
folder, or an in-memory state dict), converts it with an ``ImportPlan`` (``hf_weights``), casts it to ``dtype`` on
``device`` and puts it in place. With ``quantize`` set, an ``nn.Linear`` whose weight arrives is replaced right
away by ``mlcore.quant.QuantizedLinear(quantize(weight, scheme, **options))`` and the full-precision weight is
dropped. Peak memory is the final model plus one tensor in flight and the temporaries of quantizing it:

    peak ~ sum(final sizes) + max over tensors(full-precision copy + quantizer temporaries)

instead of a full-precision model plus the whole state dict. Measured (``tests/model/_memory_probe.py``, peak
RSS above the baseline, MiB) for the 27M Llama config (vocab 4096, d_model 512, 8 layers, GQA 8/2, tied head;
24.65M parameters, 94 MiB in float32):

    whole state dict into an initialised model (before streaming)   187    (model  94)
    streamed float32 / bfloat16                                      98 / 51 (model 94 / 47)
    streamed, quantized while loading: int8 / int4 g128 / NF4+DQ     41 / 32 / 43 (model 30 / 20 / 19)
    streamed float32, then quantize_model NF4+DQ                    122    (model  19)

The quantized loads sit above their model size by the quantizer's temporaries for the largest linear layer
(1408 x 512): about 11 MiB for int8, 22 MiB for NF4 (about 30 bytes per weight inside ``quantize_4bit``).

The layers quantized follow ``mlcore.quant.quantize_model``'s rules exactly (skip by name, default
``("lm_head",)``; a weight tied to another parameter stays in full precision; a shape the scheme cannot group
stays in full precision; each kept layer named in one ``UserWarning``), so that the streamed model equals
``quantize_model(from_pretrained(dir, dtype=...), scheme, **options)`` tensor for tensor.

Everything checkable from the checkpoint's header (names, shapes, dtypes) is checked before the first tensor
is read; errors are ``ValueError`` naming the tensor.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from mlcore.model.hf_weights import ImportPlan

QUANT_SCHEMES: tuple[str, ...] = ("int8", "int4", "nf4", "fp4")
_QUANT_KEYS = ("skip", "prefer")


_INITS = frozenset(getattr(torch.nn.init, n) for n in dir(torch.nn.init)
                   if n.endswith("_") and not n.startswith("_"))  # normal_, zeros_, kaiming_uniform_, ...
_FACTORIES = frozenset({torch.empty, torch.ones, torch.zeros})


class _ParametersOnMeta(TorchFunctionMode):
    """While active: ``torch.empty`` / ``ones`` / ``zeros`` without a device allocate on the meta device (where
    ``nn.Linear``, ``nn.Embedding`` and the norms create their parameters) and ``nn.init`` fills of meta tensors
    are skipped; everything else runs as usual, so computed buffers (RoPE's frequencies) are real.

    Plain ``with torch.device("meta")`` would also work, but PyTorch runs ``normal_`` and ``arange`` on meta
    tensors through its Python reference kernels, whose first use imports ``torch.fx`` and sympy (seconds and
    over 100 MB of resident memory, more than a small quantized model).
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _INITS:
            t = args[0] if args else kwargs.get("tensor")
            if isinstance(t, torch.Tensor) and t.is_meta:
                return t
        elif func in _FACTORIES and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def build_on_meta(cls: type[nn.Module], config: Any) -> nn.Module:
    """``cls(config)`` with every parameter on the meta device (no memory, no initialisation)."""
    try:
        with _ParametersOnMeta():
            model = cls(config)
        if all(p.is_meta for p in model.parameters()):
            return model
    except RuntimeError:  # a constructor mixing a meta parameter with a real tensor: fall back
        pass
    with torch.device("meta"):
        return cls(config)


class TensorSource(Protocol):
    """Random access to checkpoint tensors by name; ``shape`` / ``is_float`` must not read the data."""

    name: str

    def keys(self) -> list[str]: ...

    def shape(self, key: str) -> tuple[int, ...]: ...

    def is_float(self, key: str) -> bool: ...

    def read(self, key: str) -> torch.Tensor: ...


class DictSource:
    """A state dict already in memory (``Transformer.from_hf``)."""

    def __init__(self, sd: Mapping[str, torch.Tensor], name: str) -> None:
        self.sd, self.name = sd, name

    def keys(self) -> list[str]:
        return list(self.sd)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.sd[key].shape)

    def is_float(self, key: str) -> bool:
        return self.sd[key].is_floating_point()

    def read(self, key: str) -> torch.Tensor:
        return self.sd[key].detach()


def check_quantize(quantize: str | None, quant_options: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict]:
    """Validate ``from_pretrained``'s ``quantize`` / ``quant_options``; return (layer options, scheme options)."""
    if quant_options is not None and not isinstance(quant_options, Mapping):
        raise ValueError(f"quant_options: expected a dict or None, got {type(quant_options).__name__}")
    options = dict(quant_options or {})
    if quantize is None:
        if options:
            raise ValueError(f"quant_options: given ({sorted(options)}) but quantize=None; pass quantize= one of "
                             f"{QUANT_SCHEMES}")
        return {}, {}
    if quantize not in QUANT_SCHEMES:
        raise ValueError(f"quantize: expected None or one of {QUANT_SCHEMES}, got {quantize!r} (GPTQ / AWQ need "
                         "calibration data: load, then run mlcore.quant's gptq / awq)")
    from mlcore.quant.api import check_scheme

    layer = {k: options.pop(k) for k in _QUANT_KEYS if k in options}
    check_scheme(quantize, options)
    from mlcore.quant.kernels import KERNELS

    if layer.get("prefer", "auto") not in ("auto",) + KERNELS:
        raise ValueError(f"quant_options['prefer']: expected 'auto' or one of {KERNELS}, got {layer['prefer']!r}")
    skip = layer.get("skip", ("lm_head",))
    if isinstance(skip, str) or not all(isinstance(s, str) for s in skip):
        raise ValueError(f"quant_options['skip']: expected a tuple of module-name suffixes, got {skip!r}")
    layer["skip"] = tuple(skip)
    return layer, options


def _quant_targets(model: nn.Module, scheme: str, skip: tuple[str, ...], options: dict[str, Any]) -> set[str]:
    """The ``nn.Linear`` layers ``quantize_model`` would replace, decided on the meta model (warns as it does)."""
    from mlcore.quant.model import (  # one rule set, shared with quantize_model
        _shape_problem,
        _skipped_by_name,
    )

    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    targets, kept = set(), []
    for name, layer in model.named_modules():
        if type(layer) is not nn.Linear or _skipped_by_name(name, skip):
            continue
        if uses[id(layer.weight)] > 1:
            kept.append(f"{name} (weight tied to another parameter)")
            continue
        problem = _shape_problem(layer, scheme, options)
        if problem is not None:
            kept.append(f"{name} ({problem})")
            continue
        targets.add(name)
    if kept:
        warnings.warn(f"from_pretrained(quantize={scheme!r}): kept in full precision: {', '.join(kept)}",
                      stacklevel=4)
    return targets


def _aliases(model: nn.Module) -> dict[str, str]:
    """{name: first name} for state-dict entries that are the same tensor object (a tied head)."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in first:
            out[name] = first[id(t)]
        else:
            first[id(t)] = name
    return out


def check_plan(model: nn.Module, plan: ImportPlan, source: TensorSource) -> dict[str, torch.Tensor]:
    """Every tensor the model needs is in the plan, with the right shape and a float dtype; nothing is left over.
    Errors name missing tensors by mlcore name and unexpected ones by their name in the checkpoint.

    Returns {name: meta tensor} of what to fill, in state-dict order (tied aliases left out).
    """
    aliases = _aliases(model)
    expected = {k: v for k, v in model.state_dict(keep_vars=True).items() if k not in aliases}
    missing = sorted(set(expected) - set(plan.sources))
    unexpected = sorted({plan.sources[n].key for n in set(plan.sources) - set(expected)} | set(plan.unknown))
    if missing or unexpected:
        raise ValueError(f"{source.name}: weights do not match the model: missing {missing[:8]}"
                         f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                         f"{'...' if len(unexpected) > 8 else ''}")
    for name, want in expected.items():
        src = plan.sources[name]
        got = src.shape(source.shape(src.key))
        if got != tuple(want.shape):
            raise ValueError(f"{source.name}: tensor {name!r} (stored as {src.key!r}) has shape {got}, the config "
                             f"expects {tuple(want.shape)} (vocab_size / hidden size mismatch?)")
        if want.is_floating_point() and not source.is_float(src.key):
            raise ValueError(f"{source.name}: tensor {src.key!r} is not stored as floating point; expected float "
                             "weights (a quantized checkpoint? mlcore.quant.load_quantized reads mlcore's own)")
    return expected


def _set(model: nn.Module, name: str, value: torch.Tensor, *, requires_grad: bool | None = None) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if leaf in module._parameters:
        old = module._parameters[leaf]
        grad = old.requires_grad if requires_grad is None else requires_grad
        module._parameters[leaf] = nn.Parameter(value, requires_grad=grad)
    else:
        module._buffers[leaf] = value


def _rebuild_rope(model: nn.Module, device: torch.device) -> None:
    """RoPE's frequencies are a non-persistent buffer, never in a checkpoint: compute them for real."""
    rope = getattr(model, "rope", None)
    if rope is None:
        return
    fresh = type(model)._build_rope(model.config)
    for key, buf in fresh.named_buffers(recurse=False):
        rope._buffers[key] = buf.to(device)


def stream_into(model: nn.Module, plan: ImportPlan, source: TensorSource, *, dtype: torch.dtype,
                device: torch.device | str = "cpu", quantize: str | None = None,
                quant_options: Mapping[str, Any] | None = None) -> nn.Module:
    """Fill ``model`` (built on the meta device) from ``source`` following ``plan``; see the module docstring."""
    layer_opts, scheme_opts = check_quantize(quantize, quant_options)
    device = torch.device(device)
    expected = check_plan(model, plan, source)
    aliases = _aliases(model)
    targets = set() if quantize is None else _quant_targets(model, quantize, layer_opts["skip"], scheme_opts)
    if targets:
        from mlcore.quant.api import quantize as quantize_tensor
        from mlcore.quant.linear import QuantizedLinear
    last: tuple[str, torch.Tensor] | None = None  # q, k, v of GPT-2 come from one stored tensor: read it once
    with torch.no_grad():
        for name, meta in expected.items():
            src = plan.sources[name]
            if last is None or last[0] != src.key:
                last = (src.key, source.read(src.key))
            t = src.apply(last[1])
            want = dtype if meta.is_floating_point() else meta.dtype
            value = torch.empty(meta.shape, dtype=want, device=device).copy_(t)  # our own memory, contiguous
            module_name, _, leaf = name.rpartition(".")
            if module_name in targets and leaf == "weight":
                linear = model.get_submodule(module_name)
                try:
                    qt = quantize_tensor(value, quantize, **scheme_opts)
                    layer = QuantizedLinear(qt, linear.bias, prefer=layer_opts.get("prefer", "auto"))
                except ValueError as e:
                    raise ValueError(f"{source.name}: cannot quantize {name!r}: {e}") from e
                parent_name, _, child = module_name.rpartition(".")
                setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
            elif module_name in targets:  # the bias of a layer already quantized: frozen, as in from_linear
                _set(model, name, value, requires_grad=False)
            else:
                _set(model, name, value)
            del t, value
    last = None
    for alias, target in aliases.items():  # re-tie: the very same Parameter object, as Transformer.__init__ does
        module_name, _, leaf = alias.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        module._parameters[leaf] = model.get_parameter(target)
    _rebuild_rope(model, device)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"{source.name}: tensors left unmaterialised after loading: {left[:8]}")
    return model

