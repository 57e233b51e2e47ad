"""Calibration helpers shared by GPTQ and AWQ: run a model on calibration batches and catch what its Linear layers
see, through forward pre-hooks (``nn.Module.register_forward_pre_hook``).

- :func:`find_linears`: the ``nn.Linear`` layers of any module, by qualified name, minus a skip list and tied
  weights.
- :func:`linear_call_groups`: those layers in the order the forward pass calls them, with the layers that read the
  very same input tensor grouped (q/k/v projections, gate/up projections), from one traced forward pass.
- :func:`capture_inputs`: the inputs (N, in) of some layers, flattened over batch and time. With ``stop=True`` the
  forward pass is cut short (an exception raised from the hook) once every watched layer has been seen, so the
  layers after them cost nothing.
- :func:`hessian_from_inputs`: GPTQ's proxy Hessian ``H = 2 X^T X / N`` (Frantar et al. 2022, eq. 1 with the
  mean over the N calibration tokens instead of the sum; the scale cancels except in the dampening).

A calibration batch is a tensor (called as ``model(batch)``), a tuple/list (``model(*batch)``) or a dict
(``model(**batch)``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["find_linears", "linear_call_groups", "capture_inputs", "hessian_from_inputs", "run_batch",
           "set_submodule", "as_batch_list"]


class _StopForward(Exception):
    """Raised from a hook to end a calibration forward pass early."""


def as_batch_list(calibration_batches: Iterable[Any]) -> list[Any]:
    """The batches as a list (they are iterated several times); at least one is required."""
    if isinstance(calibration_batches, (Tensor, dict)):
        raise ValueError("calibration_batches must be an iterable of batches (e.g. a list of (B, T) id tensors), "
                         f"got a single {type(calibration_batches).__name__}")
    batches = list(calibration_batches)
    if not batches:
        raise ValueError("calibration_batches is empty; at least one batch is needed")
    return batches


def run_batch(model: nn.Module, batch: Any) -> Any:
    """``model(batch)``, ``model(*batch)`` or ``model(**batch)`` depending on the batch's type."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def find_linears(model: nn.Module, skip: Sequence[str] = ("lm_head",)) -> dict[str, nn.Linear]:
    """Every layer of type exactly ``nn.Linear`` in ``model`` by qualified name, except those whose name equals an
    entry of ``skip`` or ends with ``"." + entry``, and those whose weight is tied to another parameter (the rules
    of ``mlcore.quant.quantize_model``)."""
    if isinstance(skip, str) or not all(isinstance(s, str) for s in skip):
        raise ValueError(f"skip must be a tuple of module-name suffixes, got {skip!r}")
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    out = {}
    for name, module in model.named_modules():
        if type(module) is not nn.Linear or any(name == s or name.endswith("." + s) for s in skip):
            continue
        if uses[id(module.weight)] == 1:
            out[name] = module
    return out


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at the qualified ``name`` (``"layers.0.attn.q_proj"``) with ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@torch.no_grad()
def linear_call_groups(model: nn.Module, linears: dict[str, nn.Linear], batch: Any) -> list[list[str]]:
    """Names of ``linears`` in the order of their first call on ``batch``; consecutive layers given the *same*
    input tensor form one group. Layers never called are left out."""
    order: list[str] = []
    inputs: list[Tensor] = []  # kept alive so that identity comparisons are meaningful

    def hook(name: str):
        def fn(module: nn.Module, args: tuple[Any, ...]) -> None:
            if name not in order:
                order.append(name)
                inputs.append(args[0])
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()]
    try:
        run_batch(model, batch)
    finally:
        for h in handles:
            h.remove()
    groups: list[list[str]] = []
    for i, name in enumerate(order):
        if groups and inputs[i] is inputs[i - 1]:
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups


@torch.no_grad()
def capture_inputs(model: nn.Module, modules: dict[str, nn.Module], batches: Sequence[Any], *,
                   stop: bool = False) -> dict[str, Tensor]:
    """The inputs of ``modules`` over all ``batches``: name -> (N, in_features) float32, N = all tokens seen.

    With ``stop=True`` each forward pass ends as soon as every module in ``modules`` has run once (a module
    called several times per pass is then seen once per batch).
    """
    seen: dict[str, list[Tensor]] = {n: [] for n in modules}
    called: set[str] = set()

    def hook(name: str):
        def fn(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            seen[name].append(x.detach().reshape(-1, x.shape[-1]).float())
            called.add(name)
            if stop and called == set(modules):
                raise _StopForward
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in modules.items()]
    try:
        for batch in batches:
            called.clear()
            try:
                run_batch(model, batch)
            except _StopForward:
                pass
    finally:
        for h in handles:
            h.remove()
    missing = [n for n, xs in seen.items() if not xs]
    if missing:
        raise ValueError(f"modules {missing} were never called on the calibration batches")
    return {n: torch.cat(xs) for n, xs in seen.items()}


def hessian_from_inputs(x: Tensor) -> Tensor:
    """x (N, in) -> H = 2 X^T X / N, (in, in) float32: the Hessian of the layer's squared output error."""
    if x.dim() != 2 or x.shape[0] == 0:  # no rows: 0 / 0, a NaN Hessian
        raise ValueError(f"x must be (N, in_features) with N >= 1, got shape {tuple(x.shape)}")
    x = x.float()
    return 2.0 * (x.t() @ x) / x.shape[0]
