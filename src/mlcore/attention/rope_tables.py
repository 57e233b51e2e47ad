"""RoPE tables for a model's positions, made once per model instead of once per forward.

RoPE rotates the pair ``(x_i, x_{i + rd/2})`` of a token at position ``m`` by the angle ``m * theta_i``
(Su et al. 2021). A decode step needs the rotation for one position; computing ``cos`` / ``sin`` of the angles
and the signed-sin table (:func:`mlcore.positional.rope.rotary_tables`) takes a dozen small ops per forward,
while the values for position ``m`` never change. :class:`RotaryTableCache` computes them for positions
``[0, L)`` with the model's own ``rope`` module, once, and a forward whose positions are the contiguous range
``[past, past + T)`` (no padding, no explicit ``position_ids``) slices its rows: one view per table.

Each row is computed by the same element-wise ops as ``rope(position_ids)`` would compute it, so the slice equals
a per-forward table exactly (tested). The tables are rebuilt when the ``rope`` module, its ``inv_freq`` buffer
(identity, address or version) or the device changes; dynamic NTK and LongRoPE scaling, whose angles depend on
the longest position of a call, always take the per-forward path.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mlcore._tensor_state import tensor_state_key

__all__ = ["RotaryTableCache"]


class RotaryTableCache:
    """(cos, signed sin) tables, each (1, 1, L, rotary_dim), per (dtype, interleaved), for one ``rope`` module."""

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._length = 0
        self._tables: dict[tuple[torch.dtype, bool], tuple[Tensor, Tensor]] = {}
        self._ref: tuple[Any, ...] = ()

    max_positions = 8192  # beyond this (a streaming cache running on), tables are made per forward again

    def usable(self, rope: nn.Module | None, stop: int) -> bool:
        """True when positions alone determine this rope's angles (not dynamic NTK / LongRoPE) and [0, stop) is small
        enough to keep as a table (at most ``max_positions`` rows, 2 * 8192 * rotary_dim floats)."""
        return (rope is not None and stop <= self.max_positions and hasattr(rope, "inv_freq")
                and not getattr(rope, "per_call", False))

    def rows(self, rope: nn.Module, dtype: torch.dtype, interleaved: bool, start: int,
             stop: int) -> tuple[Tensor, Tensor]:
        """Tables for positions [start, stop), each (1, 1, stop - start, rotary_dim) in ``dtype``."""
        inv = rope.inv_freq
        key = (id(rope), *tensor_state_key([inv]), inv.device)
        if key != self._key or stop > self._length:  # a new or changed rope, or longer positions: rebuild
            self._length = min(max(stop, 2 * self._length, 256), max(stop, self.max_positions))
            self._key, self._tables, self._ref = key, {}, (rope, inv)  # _ref: the ids in key stay theirs
        hit = self._tables.get((dtype, interleaved))
        if hit is None:
            from mlcore.positional.rope import rotary_tables

            positions = torch.arange(self._length, device=inv.device)[None]  # (1, L)
            with torch.no_grad():
                cos, sin = rope(positions)  # (1, L, rotary_dim) float32
                hit = self._tables[(dtype, interleaved)] = rotary_tables(cos, sin, interleaved=interleaved,
                                                                         dtype=dtype)
        cos_t, sin_t = hit
        return cos_t[:, :, start:stop], sin_t[:, :, start:stop]
