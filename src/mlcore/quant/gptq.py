"""GPTQ: one-shot weight quantization with second-order error compensation (Frantar, Ashkboos, Hoefler & Alistarh
2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers").

For a layer ``Y = X W^T`` (W (out, in), calibration inputs X (N, in)) GPTQ minimises ``||X W^T - X Ŵ^T||^2`` row by
row. The loss is quadratic with Hessian ``H = 2 X^T X`` (shared by all rows). Quantizing input column q and
updating the not-yet-quantized columns F optimally (Optimal Brain Surgeon, eq. 2-3 of the paper) gives

    δ_F = - (w_q - quant(w_q)) / [H_F^{-1}]_qq · (H_F^{-1})_{q, F}

GPTQ's three steps, all here:

1. **Arbitrary order** -- columns go left to right (or by descending ``diag(H)`` with ``act_order``).
2. **Lazy batch updates** -- the update is applied inside a block of ``block_size`` columns at once, and to the
   columns after the block in one matmul ``W[:, i2:] -= Err @ Hinv[i1:i2, i2:]`` when the block is done.
3. **Cholesky reformulation** -- the rows of the successive ``H_F^{-1}`` are the rows of the upper Cholesky factor
   of ``H^{-1}`` (scaled), so ``Hinv = cholesky(inverse(H + λI), upper=True)`` is computed once, with
   dampening ``λ = damp · mean(diag(H))``.

Quantization grid: asymmetric min-max per group of ``group_size`` input columns (``bits`` bits, codes
``0 .. 2^bits - 1``, ``w ≈ (code - zero) · scale``; the range includes 0, as in the reference code). A group's
scale and zero are computed when its first column comes up, **on the weights as updated so far** (the paper's
"group scales on the updated weights").

``act_order`` with groups: columns are visited by descending ``diag(H)``, but the groups stay the *original*
consecutive column groups (so the result is an ordinary grouped int4 tensor in the original column order, no
index map needed). A group's parameters are fixed when the first of its columns is visited, from the current
(error-compensated) values of all its columns: the ones inside the current block are read from the block, the
later ones get the block's pending updates first. Without act_order this is exactly the paper's rule.
Input channels never active (``H_ii = 0``) get weight 0 and ``H_ii = 1``, as in the reference implementation.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from . import calibration as calib
from .int4 import int4_from_codes
from .linear import QuantizedLinear
from .tensor import QuantizedTensor, range_scale

__all__ = ["GPTQResult", "gptq_quantize", "gptq_quantize_model", "minmax_params", "rtn_quantize",
           "layer_output_error"]


def minmax_params(w: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Asymmetric min-max grid per row of w (out, g) -> (scale (out,), zero (out,)) with
    ``scale = (max - min) / (2^bits - 1)``, ``zero = round(-min / scale)``; the range [min, max] includes 0.
    For ``bits=4`` this is exactly ``mlcore.quant.int4.int4_rtn_codes``' grid."""
    maxq = 2**bits - 1
    lo = w.amin(dim=1).clamp(max=0.0)
    hi = w.amax(dim=1).clamp(min=0.0)
    scale = range_scale(lo, hi, maxq)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group: any scale is exact
    zero = torch.round(-lo / scale).clamp(0, maxq)
    return scale, zero


def _quant(w: Tensor, scale: Tensor, zero: Tensor, maxq: int) -> Tensor:
    """Codes of w (out,) or (out, g) on the grid (scale, zero) broadcast along rows."""
    return torch.clamp(torch.round(w / scale) + zero, 0, maxq)


def rtn_quantize(weight: Tensor, *, group_size: int | None = 128, bits: int = 4) -> Tensor:
    """Round-to-nearest on the same grid as :func:`gptq_quantize` (the baseline GPTQ improves on): the
    dequantized weight (out, in) float32."""
    if not isinstance(weight, Tensor) or weight.dim() != 2 or not weight.dtype.is_floating_point:
        seen = f"{weight.dtype} {tuple(weight.shape)}" if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"weight must be a 2-D floating-point (out, in) tensor, got {seen}")
    g = _check_grid(weight.shape[1], group_size, bits)
    w = weight.detach().float()
    out, cols = w.shape
    wg = w.reshape(out * (cols // g), g)
    scale, zero = minmax_params(wg, bits)
    q = _quant(wg, scale[:, None], zero[:, None], 2**bits - 1)
    return ((q - zero[:, None]) * scale[:, None]).reshape(out, cols)


def layer_output_error(weight: Tensor, weight_q: Tensor, x: Tensor) -> float:
    """``||X W^T - X Ŵ^T||_F`` over inputs x (N, in): the quantity GPTQ minimises."""
    return float((x.float() @ (weight.float() - weight_q.float()).t()).norm())


@dataclass
class GPTQResult:
    """GPTQ's output, in the original column order.

    codes: (out, in) uint8 in ``0 .. 2^bits - 1``; scales, zeros: (out, in // group_size) float32 (zeros are
    integers); weight: (out, in) float32, ``(codes - zero) * scale``; perm: (in,) the column visiting order
    (act_order) or None; dtype: the weight's original dtype.
    """

    codes: Tensor
    scales: Tensor
    zeros: Tensor
    weight: Tensor
    group_size: int
    bits: int
    perm: Tensor | None
    dtype: torch.dtype

    def to_quantized_tensor(self) -> QuantizedTensor:
        """The result as mlcore's int4 QuantizedTensor (``bits == 4`` only)."""
        if self.bits != 4:
            raise ValueError(f"to_quantized_tensor needs bits=4 (mlcore's int4 format), got bits={self.bits}")
        return int4_from_codes(self.codes, self.scales, self.zeros, self.group_size, self.dtype)


def _check_grid(cols: int, group_size: int | None, bits: int) -> int:
    """The group size (``cols`` for None) after checking it divides ``cols``, and ``bits`` in [2, 8]."""
    g = cols if group_size is None else group_size
    if not isinstance(g, int) or isinstance(g, bool) or g < 1 or cols % g != 0:
        raise ValueError(f"group_size must be a positive divisor of in_features={cols} (or None), got {group_size!r}")
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in [2, 8], got {bits!r}")
    return g


def _check_damp_and_block(damp: float, block_size: int) -> None:
    """``damp`` a finite number >= 0 (a fraction of mean(diag(H))), ``block_size`` a positive int."""
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not 0.0 <= damp < float("inf"):
        raise ValueError(f"damp must be a finite number >= 0, got {damp!r}")
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")


def _check(weight: Tensor, H: Tensor, group_size: int | None, bits: int, damp: float, block_size: int,
           act_order: bool) -> int:
    if not isinstance(weight, Tensor) or weight.dim() != 2 or not weight.dtype.is_floating_point:
        seen = f"{weight.dtype} {tuple(weight.shape)}" if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"weight must be a 2-D floating-point (out, in) tensor, got {seen}")
    cols = weight.shape[1]
    if not isinstance(H, Tensor) or tuple(H.shape) != (cols, cols) or H.dtype.is_complex or H.dtype == torch.bool:
        seen = f"{H.dtype} {tuple(H.shape)}" if isinstance(H, Tensor) else type(H).__name__
        raise ValueError(f"H must have shape (in, in) = ({cols}, {cols}) for weight {tuple(weight.shape)} "
                         f"(a real tensor), got {seen}")
    if not torch.isfinite(weight).all():
        raise ValueError("weight contains NaN or Inf")
    if not torch.isfinite(H).all():
        raise ValueError("H contains NaN or Inf (check the calibration activations)")
    # the Cholesky factorisation reads one triangle only: a non-symmetric H would be quantized against silently
    h = H.detach().double()
    if not torch.allclose(h, h.t(), rtol=1e-5, atol=1e-6 * float(h.abs().max())):
        raise ValueError("H must be symmetric (2 X^T X / N of the layer's inputs), got a non-symmetric matrix")
    g = _check_grid(cols, group_size, bits)
    _check_damp_and_block(damp, block_size)
    if not isinstance(act_order, bool):  # a string such as "no" is truthy: it would reorder the columns
        raise ValueError(f"act_order must be True or False, got {act_order!r}")
    return g


@torch.no_grad()
def gptq_quantize(weight: Tensor, H: Tensor, *, group_size: int | None = 128, bits: int = 4, damp: float = 0.01,
                  block_size: int = 128, act_order: bool = False) -> GPTQResult:
    """Quantize weight (out, in) with GPTQ given the proxy Hessian H (in, in) = 2 X^T X / N of its inputs.

    ``group_size=None`` means one group per row. ``damp`` is λ as a fraction of ``mean(diag(H))``.
    """
    g = _check(weight, H, group_size, bits, damp, block_size, act_order)
    maxq = 2**bits - 1
    W = weight.detach().float().clone()
    rows, cols = W.shape
    H = H.detach().to(W.device, torch.float64).clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0

    perm = torch.argsort(torch.diagonal(H), descending=True) if act_order else torch.arange(cols, device=W.device)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.diagonal(H).mean() * torch.eye(cols, dtype=H.dtype, device=H.device)
    try:
        L = torch.linalg.cholesky(H)
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True).float()  # (in, in) upper
    except RuntimeError as e:  # torch.linalg.LinAlgError subclasses RuntimeError
        raise ValueError(f"H + damp * mean(diag(H)) * I is not positive definite (damp={damp}); "
                         "raise damp or use more calibration data") from e

    n_groups = cols // g
    position = torch.argsort(perm)  # position[c] = where original column c is visited
    group_of = perm // g  # (in,) original group of each visited position
    scales = torch.zeros(rows, n_groups, device=W.device)
    zeros = torch.zeros(rows, n_groups, device=W.device)
    ready = [False] * n_groups
    codes = torch.zeros(rows, cols, device=W.device)  # in visiting order

    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()  # (out, b): this block, updated column by column
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            gi = int(group_of[i1 + i])
            if not ready[gi]:  # the group starts: its grid from the current values of all its columns
                pos = position[gi * g:(gi + 1) * g]  # visiting positions, all >= i1 + i
                inside, later = pos[pos < i2], pos[pos >= i2]
                current = torch.cat([W1[:, inside - i1], W[:, later] - Err1 @ Hinv[i1:i2, later]], dim=1)
                scales[:, gi], zeros[:, gi] = minmax_params(current, bits)
                ready[gi] = True
            w = W1[:, i]
            q = _quant(w, scales[:, gi], zeros[:, gi], maxq)
            codes[:, i1 + i] = q
            err = (w - (q - zeros[:, gi]) * scales[:, gi]) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]  # OBS update of the rest of the block
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]  # the lazy batch update of everything after the block

    codes = codes[:, position]  # back to the original column order
    expand = torch.arange(cols, device=W.device) // g
    deq = (codes - zeros[:, expand]) * scales[:, expand]
    return GPTQResult(codes=codes.to(torch.uint8), scales=scales, zeros=zeros, weight=deq, group_size=g, bits=bits,
                      perm=perm if act_order else None, dtype=weight.dtype)


@torch.no_grad()
def gptq_quantize_model(model: nn.Module, calibration_batches: Iterable[Any], *, group_size: int = 128,
                        damp: float = 0.01, block_size: int = 128, act_order: bool = False, sequential: bool = True,
                        skip: Sequence[str] = ("lm_head",)) -> nn.Module:
    """GPTQ int4 for every ``nn.Linear`` of ``model`` (any nn.Module), replaced in place by ``QuantizedLinear``.

    Layers are visited in the order the forward pass first calls them; layers that read the same input tensor
    (q/k/v, gate/up) share one Hessian. ``sequential=True`` (the paper): each layer's inputs are captured from the
    model with all earlier layers already quantized, so later layers compensate earlier errors; the forward is
    cut short after the layer. ``sequential=False``: all inputs are captured once from the float model.
    Skipped, with a warning: layers in ``skip`` (name or suffix), tied weights, in_features not divisible by
    ``group_size``, layers the calibration batches never reach. Returns ``model``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    # checked before any layer is touched: group_size=0 / None failed as ZeroDivisionError / TypeError, and a
    # truthy string act_order or sequential would run with another meaning
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 2 or group_size % 2:
        raise ValueError(f"group_size must be a positive even int (mlcore's int4 format), got {group_size!r}")
    for name, flag in (("act_order", act_order), ("sequential", sequential)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False, got {flag!r}")
    _check_damp_and_block(damp, block_size)
    batches = calib.as_batch_list(calibration_batches)
    linears = calib.find_linears(model, skip)
    kept = [f"{n} (in_features {m.in_features} not divisible by group_size {group_size})"
            for n, m in linears.items() if m.in_features % group_size]
    linears = {n: m for n, m in linears.items() if m.in_features % group_size == 0}
    groups = calib.linear_call_groups(model, linears, batches[0])
    called = {n for grp in groups for n in grp}
    kept += [f"{n} (never called on the calibration batches)" for n in linears if n not in called]
    if kept:
        warnings.warn(f"gptq_quantize_model: kept in full precision: {', '.join(kept)}", stacklevel=2)
    captured = {} if sequential else calib.capture_inputs(model, {g[0]: linears[g[0]] for g in groups}, batches)
    for grp in groups:
        if sequential:
            x = calib.capture_inputs(model, {grp[0]: linears[grp[0]]}, batches, stop=True)[grp[0]]
        else:
            x = captured.pop(grp[0])
        H = calib.hessian_from_inputs(x)
        for name in grp:
            lin = linears[name]
            result = gptq_quantize(lin.weight, H, group_size=group_size, bits=4, damp=damp, block_size=block_size,
                                   act_order=act_order)
            bias = None if lin.bias is None else lin.bias.detach()
            calib.set_submodule(model, name, QuantizedLinear(result.to_quantized_tensor(), bias))
    return model
