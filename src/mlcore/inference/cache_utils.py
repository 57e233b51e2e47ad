"""Small pieces every KV cache shares: argument checks, crop arithmetic, one index tensor for all layers."""

from __future__ import annotations

from numbers import Integral

import torch
from torch import Tensor


def check_int(name: str, value: object, low: int) -> int:
    """``value`` as an int >= ``low``, else a ValueError naming ``name`` (bools are no sizes)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def check_update(layer_idx: int, k: Tensor, v: Tensor, index: Tensor, *, n_layers_seen: int | None = None) -> None:
    """Validate one ``update`` call: k, v (B, Hkv, T, D) alike, index (B, T) integer; layers filled in order.

    Only shapes and dtypes are read (never values), so this costs no device synchronisation.
    """
    if not isinstance(layer_idx, int) or layer_idx < 0:
        raise ValueError(f"layer_idx must be an int >= 0, got {layer_idx!r}")
    if n_layers_seen is not None and layer_idx > n_layers_seen:
        raise ValueError(f"layer {layer_idx} updated before layer {n_layers_seen}: a cache is filled layer by layer "
                         "from 0 (pass layer_idx in order, or use one cache per model)")
    if k.dim() != 4 or k.shape != v.shape:
        raise ValueError(f"k and v must both be (B, Hkv, T, D) of one shape, got {tuple(k.shape)} and "
                         f"{tuple(v.shape)}")
    if not (k.is_floating_point() and v.is_floating_point()):  # a float cache of another precision casts them
        raise ValueError(f"k and v must be floating-point tensors, got {k.dtype} and {v.dtype}")
    if index.dim() != 2 or tuple(index.shape) != (k.shape[0], k.shape[2]) or index.dtype.is_floating_point:
        raise ValueError(f"index must be an integer (B, T) = ({k.shape[0]}, {k.shape[2]}) tensor, got "
                         f"{tuple(index.shape)} {index.dtype}")


def check_buffer(buffer: Tensor, layer_idx: int, B: int, Hkv: int, D: int, owner: str) -> None:
    """A preallocated (B, Hkv, L, D) buffer must match the new keys' batch, heads and head size."""
    held = (buffer.shape[0], buffer.shape[1], buffer.shape[3])
    if held != (B, Hkv, D):
        raise ValueError(f"layer {layer_idx}: this {owner} holds (B, Hkv, D) = {held}, got {(B, Hkv, D)}")


def crop_length(n: int, length: int) -> int:
    """The new length after ``crop(n)``: n >= 0 keeps the first n columns, n < 0 drops the last -n.

    numpy integers are ints here (transformers' ``Cache.crop`` takes them); bools and floats are refused."""
    if not isinstance(n, Integral) or isinstance(n, bool):
        raise ValueError(f"crop takes an int, got {n!r}")
    n = int(n)
    new = length + n if n < 0 else n
    if not 0 <= new <= length:
        raise ValueError(f"cannot crop a cache of {length} columns to {n}")
    return new


class SharedIndex:
    """Concatenate key indices once per step for all layers, so every layer gets the *same* tensor object.

    All layers see the same columns, so layer 1 asking for ``cat(prev, new)`` with the same ``prev`` and ``new``
    as layer 0 gets layer 0's result back. :class:`mlcore.attention.AttentionInputs` then recognises the
    tensor and builds the mask once per forward instead of once per layer.
    """

    def __init__(self) -> None:
        self._last: tuple[Tensor | None, Tensor, Tensor] | None = None

    def concat(self, prev: Tensor | None, new: Tensor) -> Tensor:
        last = self._last
        if last is not None and last[0] is prev and last[1] is new:
            return last[2]
        out = new if prev is None else torch.cat([prev, new], dim=1)
        self._last = (prev, new, out)
        return out
