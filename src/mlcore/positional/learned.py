"""Learned absolute position embeddings (GPT-2, BERT; Gehring et al., 2017; Radford et al., 2019).

One trainable vector per position ``p < max_len``, added to the token embedding: ``h_p = E[token_p] + P[p]``.
Nothing generalises past ``max_len`` -- there is no row to read -- which is why asking for it is an error.
"""

from __future__ import annotations

import torch
from torch import nn

from ._checks import check_index_positions


class LearnedEncoding(nn.Module):
    """A table ``P`` of shape ``(max_len, dim)``: ``forward(positions (T,) or (B, T)) -> (..., dim)``."""

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        # bool is an int subclass: LearnedEncoding(64, True) would silently build a 1-wide table
        if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1:
            raise ValueError(f"max_len must be an int >= 1, got {max_len!r}")
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {dim!r}")
        self.max_len, self.dim = max_len, dim
        self.weight = nn.Parameter(torch.empty(max_len, dim))
        nn.init.normal_(self.weight, mean=0.0, std=0.02)  # GPT-2's initialisation

    def forward(self, positions: torch.Tensor, *, validate: bool = True) -> torch.Tensor:
        """positions (B, T) integer -> (B, T, dim), row ``positions[b, t]`` of the table.

        ``validate`` checks the range on the host (one device sync); the model's decode steps and vmapped
        per-sample gradients (which cannot read a value on the host) pass False: their positions were checked
        once per call, and an index past the table still fails in the lookup itself."""
        check_index_positions(positions)
        if validate and positions.numel() and not torch.compiler.is_compiling():
            lo, hi = int(positions.min()), int(positions.max())
            if lo < 0 or hi >= self.max_len:
                raise ValueError(
                    f"positions must be in [0, max_len={self.max_len}), got range [{lo}, {hi}]; a learned encoding "
                    "has no rows past max_len"
                )
        return self.weight[positions]
