"""Sinusoidal position encoding (Vaswani et al., 2017, "Attention Is All You Need", section 3.5).

    PE(p, 2i)     = sin(p / base^(2i/dim))
    PE(p, 2i + 1) = cos(p / base^(2i/dim))

Each pair ``(2i, 2i+1)`` is a point on a circle turning at frequency ``w_i = base^(-2i/dim)``, from one turn
per ``2 pi`` positions (``i = 0``) to one per ``2 pi * base`` positions. Moving ``k`` positions rotates every pair
by ``k * w_i``, so ``PE(p + k) = M_k PE(p)`` with a block-diagonal rotation ``M_k`` that does not depend on ``p``:
relative offsets are linear maps of the encoding, which is what the paper hoped attention could exploit.
"""

from __future__ import annotations

import torch
from torch import nn

from ._checks import check_index_positions


class SinusoidalEncoding(nn.Module):
    """Fixed sin/cos encodings: ``forward(positions (T,) or (B, T)) -> (..., dim)`` float32.

    A table of ``max_len`` rows is precomputed; positions beyond it are computed from the formula directly.
    """

    inv_freq: torch.Tensor
    table: torch.Tensor

    def __init__(self, dim: int, max_len: int = 4096, base: float = 10000.0) -> None:
        super().__init__()
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1:
            raise ValueError(f"max_len must be an int >= 1, got {max_len!r}")
        # base = inf passes "> 1" but gives w_i = 0 past the first pair: every position encoded alike (sin 0, cos 1)
        if isinstance(base, bool) or not isinstance(base, (int, float)) or not 1 < base < float("inf"):
            raise ValueError(f"base must be a finite number > 1, got {base!r}")
        self.dim, self.max_len, self.base = dim, max_len, float(base)
        self.register_buffer("inv_freq", self._inv_freq().float(), persistent=False)  # (ceil(dim/2),): w_i
        self.register_buffer("table", self._encode(torch.arange(max_len)), persistent=False)  # (max_len, dim)

    def _inv_freq(self, device: torch.device | None = None) -> torch.Tensor:
        # An odd dim ends with a lone sin column 2i = dim - 1 (no cos partner), as the formula says.
        return self.base ** (-torch.arange(0, self.dim, 2, dtype=torch.float64, device=device) / self.dim)

    def _encode(self, positions: torch.Tensor) -> torch.Tensor:
        # Angles in float64: p * w_i for p in the thousands would lose ~1e-4 rad in float32.
        angles = positions[..., None].double() * self._inv_freq(positions.device)  # (..., ceil(dim/2))
        pe = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # sin at 2i, cos at 2i+1
        return pe[..., : self.dim].float()

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """``positions`` int (T,) or (B, T), >= 0 -> encodings (T, dim) or (B, T, dim)."""
        check_index_positions(positions)
        if positions.numel() and int(positions.min()) < 0:
            raise ValueError(f"positions must be >= 0, got min {int(positions.min())}")
        if positions.numel() == 0 or int(positions.max()) < self.max_len:
            return self.table[positions]
        # past the table: the formula, in the table's dtype (float16 after .half(), whatever the positions)
        return self._encode(positions.to(self.table.device)).to(self.table.dtype)
