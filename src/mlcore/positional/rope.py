"""Rotary position embedding (RoPE; Su et al., 2021, "RoFormer: Enhanced Transformer with Rotary Position Embedding").

Split a query/key head of rotary dimension ``d`` into ``d/2`` pairs ``(x_a, x_b)``. At position ``m`` pair ``i``
is rotated by the angle ``m * theta_i``:

    [x_a']   [cos m.theta_i  -sin m.theta_i] [x_a]
    [x_b'] = [sin m.theta_i   cos m.theta_i] [x_b]

Since rotations compose, ``<R(m) q, R(n) k> = <q, R(n - m) k>``: the attention score depends on positions only
through the offset ``n - m``. No weights are learned.

Two memory layouts name the pairs:

* rotate-half (GPT-NeoX / Hugging Face Llama): pair ``i`` is ``(x[i], x[i + d/2])``; then
  ``x' = x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = cat(-x[d/2:], x[:d/2])`` and
  ``cos = cat(cos(m.theta), cos(m.theta))``.
* interleaved (GPT-J / Meta's original Llama): pair ``i`` is ``(x[2i], x[2i + 1])``.

A checkpoint in one layout converts to the other by permuting the rows of the q/k projections
(``interleaved_to_half`` / ``half_to_interleaved``); the attention scores are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from numbers import Integral, Real
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from .rope_scaling import PER_CALL_TYPES, rope_inv_freq, validate_scaling


class RotaryEmbedding(nn.Module):
    """cos/sin tables for RoPE at given positions, with optional HF-style frequency scaling.

    Args:
        head_dim: size ``D`` of one attention head.
        base: ``theta`` base (HF ``rope_theta``).
        max_position_embeddings: ``L0`` for dynamic NTK (HF's ``max_position_embeddings``).
        scaling: HF-style dict (``rope_type`` in default/linear/dynamic/yarn/llama3 plus its keys), or None.
        interleaved: produce cos/sin in the interleaved (GPT-J) layout ``[c0, c0, c1, c1, ...]`` instead of the
            rotate-half layout ``[c0, c1, ..., c0, c1, ...]``; pass the same flag to :func:`apply_rotary`.
        partial_rotary_factor: rotate only the first ``int(head_dim * factor)`` dims of each head.

    ``forward(position_ids (B, T)) -> (cos, sin)``, each ``(B, T, rotary_dim)`` float32, already multiplied by
    ``attention_factor`` (YaRN's temperature; 1 otherwise), as transformers does.

    Dynamic NTK is stateless here: each call builds its frequencies for ``L = max(position_ids) + 1`` (the
    unscaled ``inv_freq`` buffer when ``L <= max_position_embeddings``). That equals a fresh transformers module
    for every length. transformers' module is stateful: once it has seen a longer sequence it keeps those grown
    frequencies for later calls of any length ``>= max_position_embeddings`` and only resets below it, so after a
    long call followed by a shorter (but still > L0) one the two differ. In token-by-token decoding positions
    grow monotonically and both agree; in both, cached keys keep the rotation they were written with.
    """

    inv_freq: torch.Tensor

    def __init__(
        self,
        head_dim: int,
        *,
        base: float = 10000.0,
        max_position_embeddings: int = 2048,
        scaling: dict[str, Any] | None = None,
        interleaved: bool = False,
        partial_rotary_factor: float = 1.0,
    ) -> None:
        super().__init__()
        if not isinstance(head_dim, int) or head_dim < 2:
            raise ValueError(f"head_dim must be an int >= 2, got {head_dim!r}")
        if (isinstance(partial_rotary_factor, bool) or not isinstance(partial_rotary_factor, Real)
                or not 0.0 < partial_rotary_factor <= 1.0):
            raise ValueError(f"partial_rotary_factor must be a number in (0, 1], got {partial_rotary_factor!r}")
        # int() below would silently truncate 10.5 (dynamic NTK divides by it) and read "10" as 10
        if (isinstance(max_position_embeddings, bool) or not isinstance(max_position_embeddings, Integral)
                or max_position_embeddings < 1):
            raise ValueError(f"max_position_embeddings must be an int >= 1, got {max_position_embeddings!r}")
        rotary_dim = int(head_dim * partial_rotary_factor)
        if rotary_dim < 2 or rotary_dim % 2:
            raise ValueError(
                f"head_dim * partial_rotary_factor must give an even rotary dimension >= 2, got head_dim={head_dim}, "
                f"partial_rotary_factor={partial_rotary_factor} -> {rotary_dim}"
            )
        self.rope_type = validate_scaling(scaling)
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim
        self.base = float(base)
        self.max_position_embeddings = int(max_position_embeddings)
        self.scaling = dict(scaling) if scaling is not None else None
        self.interleaved = bool(interleaved)
        self.partial_rotary_factor = float(partial_rotary_factor)
        inv_freq, attention_factor = rope_inv_freq(  # validated (and warned about) above: warn=False
            rotary_dim, base=self.base, scaling=self.scaling, max_position_embeddings=self.max_position_embeddings,
            warn=False,
        )
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (rotary_dim/2,)
        self.attention_factor = float(attention_factor)
        self.per_call = self.rope_type in PER_CALL_TYPES  # angles depend on the call's longest position
        # L0 for those types: a call whose positions stay below it uses the base frequencies; one reaching past it
        # switches (LongRoPE's long factors, dynamic NTK's larger base). None for the other types.
        self.per_call_limit: int | None = None
        if self.rope_type == "longrope":
            self.per_call_limit = int(self.scaling["original_max_position_embeddings"])
        elif self.per_call:
            self.per_call_limit = self.max_position_embeddings
        if self.rope_type == "longrope":  # the long factors' frequencies, for calls reaching past L0
            self.register_buffer("long_inv_freq", self._long_inv_freq(), persistent=False)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> RotaryEmbedding:
        # ``module.to(torch.bfloat16)`` would round the frequencies (and every angle m * theta_i with them);
        # keep them in float32 on whatever device the module moved to.
        super()._apply(fn, recurse)
        if self.inv_freq.dtype != torch.float32:
            inv_freq, _ = rope_inv_freq(self.rotary_dim, base=self.base, scaling=self.scaling,
                                        max_position_embeddings=self.max_position_embeddings, warn=False)
            self.inv_freq = inv_freq.to(self.inv_freq.device)
        if self.rope_type == "longrope" and self.long_inv_freq.dtype != torch.float32:
            self.long_inv_freq = self._long_inv_freq().to(self.long_inv_freq.device)
        return self

    def _long_inv_freq(self) -> torch.Tensor:
        orig = self.scaling["original_max_position_embeddings"]
        return rope_inv_freq(self.rotary_dim, base=self.base, scaling=self.scaling,
                             max_position_embeddings=self.max_position_embeddings, seq_len=orig + 1, warn=False)[0]

    @classmethod
    def from_hf_config(cls, config: Any, *, interleaved: bool = False) -> RotaryEmbedding:
        """Build from a transformers config: v5 ``rope_parameters`` or v4 ``rope_theta`` + ``rope_scaling``.

        ``config`` may also be a plain dict, e.g. a ``config.json`` read with ``json.load`` (GPT-NeoX's v4 keys
        ``rotary_pct`` / ``rotary_emb_base`` are read too).
        """
        if isinstance(config, Mapping):
            config = SimpleNamespace(**config)
        params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
        if any(isinstance(v, dict) for v in params.values()):
            raise ValueError(f"config.rope_parameters is nested per layer type ({sorted(params)}); pass one of them")
        base = (params.pop("rope_theta", None) or getattr(config, "rope_theta", None)
                or getattr(config, "rotary_emb_base", None) or 10000.0)
        partial = (params.pop("partial_rotary_factor", None) or getattr(config, "partial_rotary_factor", None)
                   or getattr(config, "rotary_pct", None) or 1.0)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        max_pos = config.max_position_embeddings
        rope_type = params.pop("rope_type", params.pop("type", "default"))
        scaling: dict[str, Any] | None = None
        if rope_type != "default":
            scaling = {"rope_type": rope_type, **params}
            if rope_type in ("yarn", "llama3", "longrope"):  # as transformers fills it (Phi-3 keeps it outside)
                orig = getattr(config, "original_max_position_embeddings", None)
                if orig is not None:
                    scaling["original_max_position_embeddings"] = orig
                scaling.setdefault("original_max_position_embeddings", max_pos)
        return cls(
            head_dim, base=base, max_position_embeddings=max_pos, scaling=scaling, interleaved=interleaved,
            partial_rotary_factor=partial,
        )

    def _inv_freq_for(self, position_ids: torch.Tensor) -> torch.Tensor:
        if self.rope_type == "longrope":  # long factors once the call reaches past L0 (a select: no host read)
            if not position_ids.numel():
                return self.inv_freq
            return torch.where(position_ids.max() + 1 > self.per_call_limit, self.long_inv_freq.to(position_ids.device),
                               self.inv_freq.to(position_ids.device))
        if self.rope_type != "dynamic":
            return self.inv_freq
        # Dynamic NTK is built for the longest position this call sees (stateless; see the class docstring).
        if not position_ids.numel() or int(position_ids.max().item()) + 1 <= self.max_position_embeddings:
            return self.inv_freq
        seq_len = position_ids.max() + 1  # a 0-d tensor: float32 arithmetic for the new base, as transformers
        inv_freq, _ = rope_inv_freq(
            self.rotary_dim, base=self.base, scaling=self.scaling,
            max_position_embeddings=self.max_position_embeddings, seq_len=seq_len, warn=False,
        )
        return inv_freq.to(self.inv_freq.device)

    def forward(
        self, *args: torch.Tensor, position_ids: torch.Tensor | None = None, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``rope(position_ids)``: (B, T) int -> ``(cos, sin)``, each (B, T, rotary_dim), float32 (or ``dtype``).

        transformers' calls ``rope(x, position_ids)`` and ``rope(x, position_ids=position_ids)`` work too: cos/sin
        then come back in ``x.dtype`` (computed in float32 and rounded once, as ``LlamaRotaryEmbedding`` does).
        """
        if len(args) == 2 and position_ids is None:
            args, position_ids = args[:1], args[1]
        if len(args) == 1 and position_ids is None:
            position_ids = args[0]  # rope(position_ids)
        elif len(args) == 1:  # rope(x, position_ids): x only gives the dtype
            dtype = args[0].dtype if dtype is None else dtype
        elif args or position_ids is None:
            raise ValueError("call rope(position_ids) or, as transformers does, rope(x, position_ids)")
        if not isinstance(position_ids, torch.Tensor):
            raise ValueError(f"position_ids must be an integer tensor (B, T), got {type(position_ids).__name__}")
        if position_ids.dtype.is_floating_point or position_ids.dtype == torch.bool:
            raise ValueError(f"position_ids must be an integer tensor, got dtype {position_ids.dtype}")
        if position_ids.dim() == 1:
            position_ids = position_ids[None]
        if position_ids.dim() != 2:
            raise ValueError(f"position_ids must have shape (B, T), got {tuple(position_ids.shape)}")
        inv_freq = self._inv_freq_for(position_ids).to(device=position_ids.device, dtype=torch.float32)
        angles = position_ids[..., None].float() * inv_freq  # (B, T, rotary_dim/2): m * theta_i
        if self.interleaved:
            angles = angles.repeat_interleave(2, dim=-1)  # [a0, a0, a1, a1, ...]
        else:
            angles = torch.cat((angles, angles), dim=-1)  # [a0, a1, ..., a0, a1, ...]
        cos, sin = angles.cos(), angles.sin()
        if self.attention_factor != 1.0:  # YaRN's temperature (a multiplication by 1 would be a wasted op)
            cos, sin = cos * self.attention_factor, sin * self.attention_factor
        return (cos, sin) if dtype is None else (cos.to(dtype), sin.to(dtype))

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, rotary_dim={self.rotary_dim}, base={self.base}, rope_type={self.rope_type}, "
            f"interleaved={self.interleaved}, attention_factor={self.attention_factor:.4f}"
        )


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``cat(-x[..., D/2:], x[..., :D/2])``: the 90-degree turn of every (x[i], x[i + D/2]) pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """``(x[2i], x[2i+1]) -> (-x[2i+1], x[2i])``: the 90-degree turn of every adjacent pair (GPT-J layout)."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rotary(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, interleaved: bool = False
) -> torch.Tensor:
    """Rotate ``x`` (B, H, T, D) by RoPE: ``x * cos + turn(x) * sin`` on the first ``rotary_dim`` dims.

    ``cos``/``sin`` are (B, T, rotary_dim) (or (T, rotary_dim)) from :class:`RotaryEmbedding`, in the layout of
    ``interleaved``; they are broadcast over heads. Dims past ``rotary_dim`` (partial rotary) pass through. The
    rotation is computed in ``x``'s dtype with cos/sin rounded to it, as transformers' ``apply_rotary_pos_emb``
    (its rotary embedding returns cos/sin in ``x``'s dtype): bf16 / fp16 results equal HF's bit for bit (computing
    in float32 and rounding once gave ~1 in 4 bfloat16 elements one rounding off HF's).
    """
    if x.dim() != 4:
        raise ValueError(f"x must have shape (B, H, T, D), got {tuple(x.shape)}")
    if not x.dtype.is_floating_point:  # the float rotation would be truncated back to x's integer dtype
        raise ValueError(f"x must have a floating dtype, got {x.dtype}")
    if cos.shape != sin.shape:
        raise ValueError(f"cos and sin must have the same shape, got {tuple(cos.shape)} and {tuple(sin.shape)}")
    if cos.dim() == 2:
        cos, sin = cos[None], sin[None]
    if cos.dim() != 3 or cos.shape[-2] != x.shape[-2] or cos.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"cos/sin must have shape (B, T, rotary_dim) = ({x.shape[0]}, {x.shape[2]}, *), "
                         f"got {tuple(cos.shape)}")
    rd = cos.shape[-1]
    if rd % 2 or rd > x.shape[-1]:
        raise ValueError(f"cos/sin last dim (rotary_dim) must be even and <= D={x.shape[-1]}, got {rd}")
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)  # (B, 1, T, rd): same angle for every head
    x_rot, x_pass = x[..., :rd], x[..., rd:]
    turn = rotate_pairs if interleaved else rotate_half
    out = x_rot * cos + turn(x_rot) * sin
    return torch.cat((out, x_pass), dim=-1) if x_pass.shape[-1] else out


def rotary_tables(cos: torch.Tensor, sin: torch.Tensor, *, interleaved: bool = False,
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Tables for :func:`apply_rotary_tables`: ``cos`` (B, 1, T, rd) and the *signed* ``sin`` (B, 1, T, rd).

    ``turn(x) * sin`` equals ``swap(x) * signed_sin``, where ``swap`` moves each pair's partner into place
    without negating it (rotate-half: ``x[i] <-> x[i + rd/2]``, a roll by rd/2; interleaved: ``x[2i] <-> x[2i+1]``)
    and ``signed_sin`` carries the minus sign (``-sin`` on the first member of each pair). Negation is exact, so
    the result is bit for bit :func:`apply_rotary`'s; a decoder builds these once per forward, for all layers.
    """
    cos, sin = (cos[None], sin[None]) if cos.dim() == 2 else (cos, sin)
    rd = cos.shape[-1]
    if interleaved:
        pairs = sin.unflatten(-1, (-1, 2))
        signed = torch.stack((-pairs[..., 0], pairs[..., 1]), dim=-1).flatten(-2)
    else:
        signed = torch.cat((-sin[..., : rd // 2], sin[..., rd // 2:]), dim=-1)
    cos, signed = cos[:, None], signed[:, None]
    return (cos if cos.dtype == dtype else cos.to(dtype)), (signed if signed.dtype == dtype else signed.to(dtype))


def apply_rotary_tables(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, *,
                        interleaved: bool = False) -> torch.Tensor:
    """``x * cos + swap(x) * signed_sin`` on the first ``rd`` dims of x (B, H, T, D): :func:`apply_rotary` with
    tables from :func:`rotary_tables` (no shape checks: the caller built both from the same positions).

    Four element-wise ops instead of about a dozen, computed in ``x``'s dtype as :func:`apply_rotary` and
    transformers do: tables in another dtype (float32 tables for a bfloat16 ``x``) are rounded to it first.
    """
    rd = cos.shape[-1]
    x_rot = x if rd == x.shape[-1] else x[..., :rd]
    if cos.dtype != x.dtype:
        cos, signed_sin = cos.to(x.dtype), signed_sin.to(x.dtype)  # rounding -sin equals negating rounded sin
    if interleaved:
        swapped = x_rot.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    else:
        swapped = x_rot.roll(rd // 2, dims=-1)  # [x2, x1]: each member of a pair meets its partner
    out = x_rot * cos + swapped * signed_sin  # not addcmul: its fused multiply-add would round differently
    return out if rd == x.shape[-1] else torch.cat((out, x[..., rd:]), dim=-1)


def _permute_rows(w: torch.Tensor, head_dim: int | None, rotary_dim: int | None, to_half: bool) -> torch.Tensor:
    head_dim = w.shape[0] if head_dim is None else head_dim
    rotary_dim = head_dim if rotary_dim is None else rotary_dim
    if w.dim() < 1 or w.shape[0] % head_dim:
        raise ValueError(f"w.shape[0] must be a multiple of head_dim={head_dim}, got shape {tuple(w.shape)}")
    if rotary_dim % 2 or not 0 < rotary_dim <= head_dim:
        raise ValueError(f"rotary_dim must be even and in (0, head_dim={head_dim}], got {rotary_dim}")
    rest = w.shape[1:]
    heads = w.reshape(w.shape[0] // head_dim, head_dim, *rest)
    rot, keep = heads[:, :rotary_dim], heads[:, rotary_dim:]
    if to_half:  # row 2i -> i, row 2i+1 -> i + rd/2
        rot = rot.reshape(-1, rotary_dim // 2, 2, *rest).transpose(1, 2)
    else:  # row i -> 2i, row i + rd/2 -> 2i+1
        rot = rot.reshape(-1, 2, rotary_dim // 2, *rest).transpose(1, 2)
    rot = rot.reshape(-1, rotary_dim, *rest)
    return torch.cat((rot, keep), dim=1).reshape(w.shape)


def interleaved_to_half(
    w: torch.Tensor, *, head_dim: int | None = None, rotary_dim: int | None = None
) -> torch.Tensor:
    """Permute q/k projection rows (out_features first; weight or bias) from interleaved to rotate-half layout.

    Rows come in heads of ``head_dim`` (default: all rows are one head); within each head the first
    ``rotary_dim`` (default ``head_dim``) rows are reordered so row ``2i`` goes to ``i`` and ``2i+1`` to
    ``i + rotary_dim/2`` -- the permutation transformers' Llama conversion script applies to Meta's weights.
    """
    return _permute_rows(w, head_dim, rotary_dim, to_half=True)


def half_to_interleaved(
    w: torch.Tensor, *, head_dim: int | None = None, rotary_dim: int | None = None
) -> torch.Tensor:
    """Inverse of :func:`interleaved_to_half`: rotate-half rows ``i, i + rotary_dim/2`` -> ``2i, 2i+1``."""
    return _permute_rows(w, head_dim, rotary_dim, to_half=False)
