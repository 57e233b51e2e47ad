"""Argument checks shared by the table-lookup position encodings (sinusoidal, learned)."""

from __future__ import annotations

from typing import Any

import torch


def check_index_positions(positions: Any) -> None:
    """``positions`` must be an int64 or int32 tensor (as ``nn.Embedding`` takes): torch reads a uint8 index tensor
    as a boolean mask (rows 1 and 2 of positions [0, 1, 2], silently), and int8 / int16 indices fail deep inside
    indexing. Reads no values (no device sync)."""
    if not isinstance(positions, torch.Tensor):
        raise ValueError(f"positions must be an integer tensor, got {type(positions).__name__}")
    if positions.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"positions must be an int64 or int32 tensor, got dtype {positions.dtype}")
