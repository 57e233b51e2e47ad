"""AWQ: activation-aware weight quantization (Lin, Tang, Tang, Yang, Dang, Gan & Han 2023, "AWQ: Activation-aware
Weight Quantization for LLM Compression and Acceleration").

A few input channels of a layer carry much larger activations than the rest; their weights matter most. Instead
of keeping them in high precision, AWQ scales them up before quantization and the activations down by the same
factor, which leaves the float function unchanged and shrinks the *relative* rounding error of the salient
weights:

    Y = X W^T = (X diag(s)^-1) (W diag(s))^T  ≈  (X / s) Q(W · s)^T

Per input channel ``s = mean_tokens(|x|)^α`` (normalised by ``sqrt(max(s) · min(s))``), with α found by a grid
search over ``[0, 1)`` (20 points) minimising, on the calibration inputs, the output error
``Σ_i ||X W_i^T - X (Q(W_i s) / s)^T||^2`` of all the linears that read X (``Q`` = round-to-nearest int4 per
group, ``mlcore.quant.int4``). α = 0 is plain round-to-nearest, so on the calibration data AWQ is never worse.

The division by ``s`` is folded into whatever produced X, so no extra op runs at inference:
an RMSNorm / LayerNorm (``weight /= s``, and ``bias /= s``) or a linear layer (its output rows ``/= s``).
For mlcore's Transformer the pairs are found by name: ``attn_norm -> q/k/v_proj``, ``v_proj -> o_proj``,
``mlp_norm -> gate/up_proj`` (``up_proj`` for the GELU MLP) and, for SwiGLU, ``up_proj -> down_proj`` (the
gate multiplies ``up`` elementwise, so a row scale passes through). With grouped-query attention a value head
serves ``G`` query heads, so ``o_proj``'s scales are tied within each group (one scale per ``v_proj`` output).
Other models pass ``mapping={previous module name: [linear names]}``; the previous module's output must reach the
linears unchanged (no nonlinearity in between), or the float function changes.

Deviation from the reference code: the loss is the output error of the linears themselves, not of the whole
attention / MLP block; calibration inputs come from the float model (with the scales found so far folded in,
which does not change it), as in the original ``llm-awq`` search.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .calibration import as_batch_list, capture_inputs
from .int4 import int4_rtn_codes
from .model import quantize_model

__all__ = ["AWQSearch", "awq_search", "awq_search_scales", "awq_fold_scales", "awq_apply_scales",
           "awq_quantize_model", "transformer_awq_mapping"]

Mapping = dict[str, list[str]]


def _rtn_int4(w: Tensor, group_size: int) -> Tensor:
    """Round-to-nearest int4 of w (out, in), dequantized, float32 (mlcore's int4 grid)."""
    codes, scales, zeros = int4_rtn_codes(w, group_size)
    expand = torch.arange(w.shape[1], device=w.device) // group_size
    return (codes.float() - zeros.float()[:, expand]) * scales[:, expand]


@dataclass
class AWQSearch:
    """scales: (in,) per input channel (``scales[tie]`` when tied); alpha: the chosen exponent;
    errors: (n_grid,) the mean squared output error at each grid point (index 0 = α 0 = plain RTN)."""

    scales: Tensor
    alpha: float
    errors: Tensor


@torch.no_grad()
def awq_search(linear_weights: Sequence[Tensor], x: Tensor, *, group_size: int = 128, n_grid: int = 20,
               tie: Tensor | None = None) -> AWQSearch:
    """Grid-search AWQ's per-channel scales for the linears ``linear_weights`` [(out_i, in)] reading x (N, in).

    ``tie`` (in,) long, optional: input channel c uses scale ``t[tie[c]]`` of a smaller vector t (its mean |x|
    statistic averaged over the tied channels); the returned ``scales`` are then t, of length ``tie.max() + 1``.
    """
    if not linear_weights:
        raise ValueError("linear_weights is empty; pass the weights (out_i, in) of the linears that read x")
    if x.dim() != 2 or x.shape[0] == 0:  # no rows: mean |x| would be NaN and every scale NaN
        raise ValueError(f"x must be (N, in_features) with N >= 1, got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"x.dtype: expected floating-point activations, got {x.dtype}")
    in_f = x.shape[1]
    for i, w in enumerate(linear_weights):
        if w.dim() != 2 or w.shape[1] != in_f:
            raise ValueError(f"linear_weights[{i}] must be (out, {in_f}) to match x, got {tuple(w.shape)}")
        if not torch.isfinite(w).all():
            raise ValueError(f"linear_weights[{i}] contains NaN or Inf")
    if not torch.isfinite(x).all():
        raise ValueError("x (calibration activations) contains NaN or Inf")
    if not isinstance(n_grid, int) or isinstance(n_grid, bool) or n_grid < 1:
        raise ValueError(f"n_grid must be a positive int, got {n_grid!r}")
    x = x.float()
    stat = x.abs().mean(dim=0)  # (in,) mean |x| per input channel
    if tie is not None:
        if tuple(tie.shape) != (in_f,) or tie.dtype != torch.long:
            raise ValueError(f"tie must be a (in,) = ({in_f},) long tensor, got {tie.dtype} {tuple(tie.shape)}")
        n = int(tie.max()) + 1
        # every index in 0 .. n-1 must be used: a negative one would index out of range, an unused one would
        # average no channels (0 / 0, a NaN scale)
        if int(tie.min()) < 0 or int((torch.bincount(tie, minlength=n) == 0).sum()):
            raise ValueError(f"tie: expected every value in 0 .. {n - 1} used at least once (no negatives), "
                             f"got {sorted(set(tie.tolist()))[:8]}")
        stat = torch.zeros(n, device=x.device).index_add_(0, tie, stat) / torch.bincount(tie, minlength=n)
    weights = torch.cat([w.detach().float() for w in linear_weights])  # (sum out_i, in)
    y_ref = x @ weights.t()
    errors = torch.empty(n_grid)
    best: tuple[float, float, Tensor] | None = None
    for k in range(n_grid):
        alpha = k / n_grid
        s = stat.pow(alpha).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        s_full = s if tie is None else s[tie]
        w_q = _rtn_int4(weights * s_full, group_size) / s_full
        errors[k] = (y_ref - x @ w_q.t()).pow(2).mean()
        if best is None or errors[k] < best[0]:
            best = (float(errors[k]), alpha, s)
    assert best is not None
    return AWQSearch(scales=best[2], alpha=best[1], errors=errors)


def awq_search_scales(linear_weights: Sequence[Tensor], x: Tensor, *, group_size: int = 128, n_grid: int = 20,
                      tie: Tensor | None = None) -> Tensor:
    """AWQ's per-input-channel scales (in,) for the linears reading x (N, in); see :func:`awq_search`."""
    return awq_search(linear_weights, x, group_size=group_size, n_grid=n_grid, tie=tie).scales


@torch.no_grad()
def awq_fold_scales(prev: nn.Module, linears: Sequence[nn.Linear], scales: Tensor,
                    tie: Tensor | None = None) -> None:
    """Multiply the linears' input columns by ``scales`` (``scales[tie]``) and divide ``prev``'s output by it.

    ``prev``: a norm with a ``weight`` (and maybe ``bias``) over its last dimension, or an ``nn.Linear`` whose
    output rows are the scaled channels. The composed float function is unchanged.
    """
    if not isinstance(scales, Tensor) or scales.dim() != 1:
        raise ValueError(f"scales must be a 1-D tensor, got "
                         f"{tuple(scales.shape) if isinstance(scales, Tensor) else type(scales).__name__}")
    s = scales.detach().float()
    if not bool(torch.isfinite(s).all()) or not bool((s != 0).all()):  # 0 / NaN / inf would break the model
        raise ValueError(f"scales must be finite and non-zero, got min {float(s.min())}, max {float(s.max())}")
    s_full = s if tie is None else s[tie]
    if isinstance(prev, nn.Linear):
        if prev.out_features != s.numel():
            raise ValueError(f"prev linear has out_features={prev.out_features}, scales has {s.numel()} entries")
        prev.weight.div_(s.to(prev.weight)[:, None])
    elif isinstance(getattr(prev, "weight", None), Tensor) and prev.weight.dim() == 1:
        if prev.weight.numel() != s.numel():
            raise ValueError(f"prev norm has {prev.weight.numel()} channels, scales has {s.numel()} entries")
        prev.weight.div_(s.to(prev.weight))
    else:
        raise ValueError(f"prev must be an nn.Linear or a norm with a 1-D weight, got {type(prev).__name__}")
    if getattr(prev, "bias", None) is not None:
        prev.bias.div_(s.to(prev.bias))
    for lin in linears:
        if lin.in_features != s_full.numel():
            raise ValueError(f"linear has in_features={lin.in_features}, scales cover {s_full.numel()} channels")
        lin.weight.mul_(s_full.to(lin.weight)[None, :])


def transformer_awq_mapping(model: nn.Module) -> tuple[Mapping, dict[str, Tensor]]:
    """The AWQ pairs of an mlcore Transformer (any module whose blocks have ``attn_norm``, ``attn``, ``mlp_norm``,
    ``mlp``): ``({previous: [linears]}, {o_proj name: tie})``; empty if no such block is found."""
    mapping: Mapping = {}
    ties: dict[str, Tensor] = {}
    for name, block in model.named_modules():
        if not all(hasattr(block, a) for a in ("attn_norm", "attn", "mlp_norm", "mlp")):
            continue
        p = f"{name}." if name else ""
        attn, mlp = block.attn, block.mlp
        if hasattr(attn, "q_proj"):
            mapping[f"{p}attn_norm"] = [f"{p}attn.q_proj", f"{p}attn.k_proj", f"{p}attn.v_proj"]
            hkv, h, d = attn.n_kv_heads, attn.n_heads, attn.head_dim
            mapping[f"{p}attn.v_proj"] = [f"{p}attn.o_proj"]
            # o_proj input channel (head j, dim e) reads v channel (j // G, e), G = H / Hkv
            ties[f"{p}attn.o_proj"] = ((torch.arange(h) // (h // hkv))[:, None] * d + torch.arange(d)).reshape(-1)
        elif hasattr(attn, "qkv_proj"):
            mapping[f"{p}attn_norm"] = [f"{p}attn.qkv_proj"]
        if hasattr(mlp, "gate_proj"):
            mapping[f"{p}mlp_norm"] = [f"{p}mlp.gate_proj", f"{p}mlp.up_proj"]
            mapping[f"{p}mlp.up_proj"] = [f"{p}mlp.down_proj"]
        elif hasattr(mlp, "up_proj"):
            mapping[f"{p}mlp_norm"] = [f"{p}mlp.up_proj"]
    return mapping, ties


@torch.no_grad()
def awq_apply_scales(model: nn.Module, calibration_batches: Iterable[Any], *, group_size: int = 128,
                     n_grid: int = 20, mapping: Mapping | None = None,
                     ties: dict[str, Tensor] | None = None) -> dict[str, AWQSearch]:
    """Search AWQ scales for every (previous -> linears) pair and fold them in place; the float model computes
    the same function afterwards. Returns the search result per previous-module name.

    ``mapping`` defaults to :func:`transformer_awq_mapping` (mlcore's Transformer); ``ties`` maps a linear's
    name to a channel tie (see :func:`awq_search`) for pairs whose widths differ (GQA's v_proj -> o_proj).
    """
    batches = as_batch_list(calibration_batches)
    if mapping is None:
        mapping, auto_ties = transformer_awq_mapping(model)
        ties = {**auto_ties, **(ties or {})}
        if not mapping:
            raise ValueError("no mlcore Transformer blocks found in model; pass mapping={previous: [linears]}")
    ties = ties or {}
    modules = dict(model.named_modules())
    results: dict[str, AWQSearch] = {}
    for prev_name, names in mapping.items():
        for n in (prev_name, *names):
            if n not in modules:
                raise ValueError(f"mapping names {n!r}, which is not a submodule of the model")
        linears = [modules[n] for n in names]
        if not all(isinstance(m, nn.Linear) for m in linears):
            raise ValueError(f"mapping[{prev_name!r}] must name nn.Linear layers, got {names}")
        tie = ties.get(names[0])
        if tie is None and isinstance(modules[prev_name], nn.Linear) and \
                modules[prev_name].out_features != linears[0].in_features:
            raise ValueError(f"{prev_name!r} has {modules[prev_name].out_features} outputs but {names[0]!r} reads "
                             f"{linears[0].in_features} channels; pass ties={{{names[0]!r}: index}}")
        x = capture_inputs(model, {names[0]: linears[0]}, batches, stop=True)[names[0]]
        found = awq_search([m.weight for m in linears], x, group_size=group_size, n_grid=n_grid,
                           tie=None if tie is None else tie.to(x.device))
        awq_fold_scales(modules[prev_name], linears, found.scales, None if tie is None else tie.to(x.device))
        results[prev_name] = found
    return results


@torch.no_grad()
def awq_quantize_model(model: nn.Module, calibration_batches: Iterable[Any], group_size: int = 128, *,
                       n_grid: int = 20, mapping: Mapping | None = None, ties: dict[str, Tensor] | None = None,
                       skip: Sequence[str] = ("lm_head",)) -> nn.Module:
    """AWQ int4: fold the searched scales (:func:`awq_apply_scales`), then replace every ``nn.Linear`` not in
    ``skip`` by an int4 ``QuantizedLinear`` (round to nearest, groups of ``group_size``) through
    ``mlcore.quant.quantize_model`` and its rules (tied weights and indivisible widths stay float, with a
    warning). In place; returns model."""
    awq_apply_scales(model, calibration_batches, group_size=group_size, n_grid=n_grid, mapping=mapping, ties=ties)
    return quantize_model(model, "int4", group_size=group_size, skip=tuple(skip))
