"""``make_cache(name_or_cache, model, ...)``: the cache ``generate`` uses, from a name or an object."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mlcore.attention import check_cache

CACHE_NAMES = ("dynamic", "static", "paged", "sliding", "int8")


def make_cache(cache: str | Any, model: nn.Module, *, batch: int, max_len: int,
               device: torch.device | str | None = None, **options: Any) -> Any:
    """A fresh cache of the named kind sized for ``batch`` rows of ``max_len`` columns, or ``cache`` checked.

    A cache object passed in must be empty; a StaticCache must be long enough for ``max_len`` columns.
    ``generate`` asks for prompt + max_new_tokens - 1 columns: the last new token is never fed back.
    ``options`` go to the cache's constructor (e.g. ``window=``, ``sinks=`` for "sliding", ``block_size=``
    for "paged").
    """
    c = model.config
    if cache is None:
        raise ValueError(f"cache must be one of {CACHE_NAMES} or a cache object, got None (generate always "
                         "decodes with a cache; generate_no_cache is the cache-free baseline)")
    if isinstance(cache, type):  # the class has the protocol's methods, but unbound: fail here, not deep inside
        raise ValueError(f"cache must be a cache object, got the class {cache.__name__}; pass an instance (e.g. "
                         f"{cache.__name__}.for_model(model, batch, max_len)) or a name from {CACHE_NAMES}")
    if not isinstance(cache, str):
        check_cache(cache)
        _check_sliding_object(cache, model, max_len)
        _check_object_dtype(cache, model)
        if cache.get_seq_length() != 0:
            raise ValueError(f"cache must be empty at the start of generate, it holds {cache.get_seq_length()} "
                             "columns (call .crop(0) / .reset(), or pass a new one)")
        cap = getattr(cache, "max_len", None)
        if cap is not None and cap < max_len and not getattr(cache, "streaming", False):
            raise ValueError(f"cache holds at most max_len={cap} columns, but prompt + max_new_tokens - 1 = "
                             f"{max_len} are cached")
        return cache
    if cache not in CACHE_NAMES:
        raise ValueError(f"cache must be one of {CACHE_NAMES} or a cache object, got {cache!r}")
    if cache != "sliding" and max_len > c.max_seq_len:
        raise ValueError(f"prompt + max_new_tokens - 1 = {max_len} cached columns exceed the model's max_seq_len="
                         f"{c.max_seq_len} (lower max_new_tokens, or use cache='sliding' with a RoPE model)")
    if cache == "dynamic":
        from mlcore.inference.dynamic_cache import DynamicCache

        return DynamicCache()
    if cache == "static":
        from mlcore.inference.static_cache import StaticCache

        return StaticCache.for_model(model, batch, max_len, device=device, **options)
    if cache == "paged":
        from mlcore.inference.paged_cache import PagedCache

        return PagedCache.for_model(model, batch, max_len, device=device, **options)
    if cache == "sliding":
        from mlcore.inference.sliding_cache import SlidingWindowCache

        sliding = SlidingWindowCache.for_model(model, batch, max_len, device=device, **options)
        if max_len > c.max_seq_len and not sliding.streaming:
            raise ValueError(f"prompt + max_new_tokens - 1 = {max_len} cached columns exceed the model's "
                             f"max_seq_len={c.max_seq_len}, and this model's positions cannot stream past it "
                             "(learned positions, or a window longer than the training length)")
        return sliding
    from mlcore.inference.quantized_cache import QuantizedCache

    return QuantizedCache.for_model(model, batch, max_len, device=device, **options)


def _check_sliding_object(cache: Any, model: nn.Module, max_len: int) -> None:
    """A SlidingWindowCache built by hand: sinks on a RoPE model need the model's rotary embedding (to re-rotate
    the sink keys to their new positions), and streaming past ``max_seq_len`` needs positions that can."""
    from mlcore.inference.sliding_cache import SlidingWindowCache, can_stream

    if not isinstance(cache, SlidingWindowCache):
        return
    c = model.config
    if cache.sinks > 0 and cache.rope is None and getattr(model, "rope", None) is not None:
        raise ValueError("this SlidingWindowCache keeps sinks but was built without rope=, so the sink keys would "
                         "keep their old rotation on this RoPE model; build it with "
                         "SlidingWindowCache.for_model(model, ...) or pass rope=")
    if max_len > c.max_seq_len and not can_stream(c, cache.window, cache.sinks):  # for_model's rule
        raise ValueError(f"prompt + max_new_tokens - 1 = {max_len} cached columns exceed the model's max_seq_len="
                         f"{c.max_seq_len}, and this model cannot stream past it with this cache (learned positions, "
                         "or window + sinks longer than max_seq_len)")


def _check_object_dtype(cache: Any, model: nn.Module) -> None:
    """A cache object allocated in another float dtype than the model's (``for_model(..., dtype=)``): attention
    would refuse its keys only after the prefill wrote layer 0 into it, so refuse it here, before any write.
    Each preallocated cache says its dtype (``.dtype``; a DynamicCache has none). Under autocast the queries take
    the autocast dtype instead: not checked there."""
    p = next(model.parameters())
    held = getattr(cache, "dtype", None)
    if isinstance(held, torch.dtype) and not torch.is_autocast_enabled(p.device.type) and held != p.dtype:
        raise ValueError(f"cache was allocated in {held} but the model computes in {p.dtype}; build it with "
                         f"dtype={p.dtype} (or leave dtype= out of for_model)")
