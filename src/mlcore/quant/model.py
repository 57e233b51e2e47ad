"""``quantize_model``: swap a model's ``nn.Linear`` layers for ``QuantizedLinear``, in place.

Works on any ``nn.Module`` (mlcore's ``Transformer``, transformers models): every submodule whose type is
exactly ``nn.Linear`` is a candidate (subclasses such as ``nn.MultiheadAttention``'s ``out_proj`` read their
``.weight`` directly and are left alone; so are transformers' GPT-2 ``Conv1D`` layers, which are not Linear).

Rules, in order, each skipped layer named in a ``UserWarning`` (never silently):

1. **skip by name**: a layer whose qualified name equals an entry of ``skip`` or ends with ``"." + entry`` is
   kept as it is (default ``("lm_head",)``: the vocabulary projection is the most sensitive layer).
2. **tied weights**: a layer whose weight is shared with another parameter (``lm_head`` tied to the token
   embedding) is kept in full precision. Quantizing it would either change the embedding as well or untie the
   pair and store the matrix twice; so a tied head stays tied and unquantized even if ``skip`` is empty.
3. **shape**: int4 and int8 ``granularity="group"`` need ``in_features`` divisible by ``group_size`` (int4 also
   even); a layer that is not is kept in full precision. NF4 / FP4 blocks run over the flattened weight and fit
   any shape.

Bad arguments (unknown scheme or option, a ``prefer`` kernel a layer cannot take) and bad weights (not finite, not
float32 / float16 / bfloat16) of the layers to quantize raise ``ValueError`` (naming the layer) before any layer
changes.
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any

from torch import nn

from .api import check_scheme
from .linear import QuantizedLinear
from .tensor import check_weight


def _skipped_by_name(name: str, skip: tuple[str, ...]) -> bool:
    return any(name == s or name.endswith("." + s) for s in skip)


def _shape_problem(layer: nn.Linear, scheme: str, options: dict[str, Any]) -> str | None:
    k = layer.in_features
    if scheme == "int4":
        g = options.get("group_size", 128)
        if isinstance(g, int) and (k % g or g % 2):
            return f"in_features {k} is not divisible by group_size {g}"
    if scheme == "int8" and options.get("granularity") == "group":
        g = options.get("group_size")
        if isinstance(g, int) and g > 0 and k % g:
            return f"in_features {k} is not divisible by group_size {g}"
    return None


def quantize_model(model: nn.Module, scheme: str, *, skip: tuple[str, ...] | list[str] = ("lm_head",),
                   prefer: str = "auto", **options: Any) -> nn.Module:
    """Replace ``model``'s ``nn.Linear`` layers by ``QuantizedLinear(quantize(weight, scheme, **options))``.

    Returns the same ``model`` object (modified in place). ``prefer`` is passed to every ``QuantizedLinear``.
    A bare ``nn.Linear`` cannot be replaced in place: the new ``QuantizedLinear`` is returned instead.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected an nn.Module, got {type(model).__name__}")
    check_scheme(scheme, options)
    if type(model) is nn.Linear:
        return QuantizedLinear.from_linear(model, scheme, prefer=prefer, **options)
    if isinstance(skip, str) or not all(isinstance(s, str) for s in skip):
        raise ValueError(f"skip: expected a tuple of module-name suffixes, got {skip!r}")
    skip = tuple(skip)
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    targets = [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear]
    skipped: list[str] = []
    chosen: list[tuple[str, nn.Linear]] = []
    for name, layer in targets:
        if _skipped_by_name(name, skip):
            continue
        if uses[id(layer.weight)] > 1:
            skipped.append(f"{name} (weight tied to another parameter)")
            continue
        problem = _shape_problem(layer, scheme, options)
        if problem is not None:
            skipped.append(f"{name} ({problem})")
            continue
        chosen.append((name, layer))
    # Check every weight before replacing any layer: a bad weight (NaN, float64, meta) in a late layer must not
    # leave the model half-quantized, and the error names the layer.
    for name, layer in chosen:
        check_weight(layer.weight.detach(), f"{name}.weight")
    # Build every new layer before swapping any in: a forced kernel (prefer="int8pack") that one layer's shape
    # cannot take must not leave the earlier layers quantized either.
    new_layers: list[tuple[str, QuantizedLinear]] = []
    for name, layer in chosen:
        try:
            new_layers.append((name, QuantizedLinear.from_linear(layer, scheme, prefer=prefer, **options)))
        except ValueError as e:
            raise ValueError(f"layer {name!r}: {e}") from e
    for name, new in new_layers:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    if skipped:
        warnings.warn(f"quantize_model({scheme}): kept in full precision: {', '.join(skipped)}", stacklevel=2)
    if not new_layers and not skipped:  # e.g. GPT-2, whose projections are transformers' Conv1D (weight (in, out)), not nn.Linear
        others = sorted({type(m).__name__ for _, m in model.named_modules() if type(m).__name__ == "Conv1D"})
        hint = (f"; its {others[0]} layers are not nn.Linear (mlcore.finetune.prepare_qlora converts GPT-2's)"
                if others else "")
        warnings.warn(f"quantize_model({scheme}): no layer was quantized{hint}", stacklevel=2)
    return model
