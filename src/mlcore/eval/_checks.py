"""Input checks shared by the evaluation metrics: one place that turns bad input into a clear ``ValueError``."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral
from typing import Any

import numpy as np
import torch


def as_float_array(name: str, values: Any, *, ndim: int | tuple[int, ...] = 1, min_len: int = 1) -> np.ndarray:
    """``values`` as a float64 NumPy array with ``ndim`` dims, at least ``min_len`` rows, no NaN / inf."""
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric, got {type(values).__name__}: {exc}") from None
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if arr.ndim not in dims:
        raise ValueError(f"{name} must have {' or '.join(map(str, dims))} dimension(s), got shape {arr.shape}")
    if arr.shape[0] < min_len:
        raise ValueError(f"{name} needs at least {min_len} value(s), got {arr.shape[0]}")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"{name} holds {bad} NaN or infinite value(s); drop or impute them first")
    return arr


def check_same_length(a_name: str, a: Sequence[Any], b_name: str, b: Sequence[Any]) -> None:
    if len(a) != len(b):
        raise ValueError(f"{a_name} and {b_name} must have the same length, got {len(a)} and {len(b)}")


def check_positive_int(name: str, value: Any, low: int = 1) -> int:
    """``value`` as an int >= ``low``; NumPy integers count (``n_bins=np.int64(10)`` was refused), bools do not."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)
