"""Context-window limits, measured: perplexity against position past the length a model was trained at.

A RoPE model trained on ``L0`` positions has seen rotation angles ``m * theta_i`` only for ``m < L0``. Fed a
longer text, it meets unseen angles and its perplexity past ``L0`` climbs. The remedies compared here (all in
``mlcore.positional.rope_scaling``; ``s`` = factor, usually ``L / L0``):

* ``rope``    -- plain RoPE, no change (the baseline that breaks);
* ``linear``  -- position interpolation (Chen et al. 2023): positions read as ``m / s``;
* ``dynamic`` -- dynamic NTK (bloc97 / emozilla 2023): the RoPE base grows with the sequence length;
* ``yarn``    -- YaRN (Peng et al. 2023): high frequencies kept, low ones interpolated, logits tempered;
* ``sinks``   -- no scaling; StreamingLLM (Xiao et al. 2023): keep ``sinks`` first tokens and a sliding window
  of recent ones (``mlcore.inference.SlidingWindowCache``), so every attention offset stays below ``L0``.
  Prefill covers the first ``window`` tokens, then tokens go one at a time (the exact streaming semantics).

The scalings are applied without fine-tuning (the papers fine-tune briefly after interpolating; untuned,
interpolation also hurts the positions inside ``L0``, which the table shows). ``position_perplexity``
returns a tidy table (one row per method and position bin); ``plot_position_perplexity`` draws it.
Shapes: ``input_ids`` (B, L) with ``L`` > the model's ``max_seq_len``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

METHODS = ("rope", "linear", "dynamic", "yarn", "sinks")


def scaled_model(model: nn.Module, method: str, *, max_seq_len: int, factor: float | None = None) -> nn.Module:
    """The same weights in a ``Transformer`` that accepts ``max_seq_len`` tokens with RoPE scaled by ``method``
    ("rope" = unscaled, "linear", "dynamic", "yarn"); ``factor`` defaults to ``max_seq_len / trained length``."""
    from mlcore.model import Transformer

    c = model.config
    if c.position != "rope":
        raise ValueError(f"model must use RoPE positions, got position={c.position!r}")
    if method not in METHODS[:4]:
        raise ValueError(f"method must be one of {METHODS[:4]} for scaled_model, got {method!r}")
    trained = c.rope_max_position_embeddings or c.max_seq_len
    factor = max_seq_len / trained if factor is None else factor
    scaling: dict[str, Any] | None
    if method == "rope":
        scaling = None
    elif method == "yarn":
        scaling = {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": trained}
    else:
        scaling = {"rope_type": method, "factor": factor}
    # dynamic NTK reads rope_max_position_embeddings as the trained length L0 and grows the base past it
    cfg = dataclasses.replace(c, max_seq_len=max_seq_len, rope_scaling=scaling, rope_max_position_embeddings=trained)
    new = Transformer(cfg)
    new.load_state_dict(model.state_dict())
    p = next(model.parameters())
    return new.to(device=p.device, dtype=p.dtype).eval()


@torch.no_grad()
def _full_nll(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = model(ids).float()[:, :-1]  # (B, L-1, V)
    return F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # (B, L-1)


@torch.no_grad()
def _streaming_nll(model: nn.Module, ids: torch.Tensor, *, window: int, sinks: int) -> torch.Tensor:
    from mlcore.inference import SlidingWindowCache

    B, L = ids.shape
    cache = SlidingWindowCache.for_model(model, B, L, window=window, sinks=sinks)
    prefill = min(window, L)
    logits = [model(ids[:, :prefill], cache=cache).float()]  # (B, prefill, V)
    for t in range(prefill, L - 1):
        pos = torch.full((B, 1), t, dtype=torch.long, device=ids.device)
        logits.append(model(ids[:, t:t + 1], cache=cache, position_ids=pos, validate=False).float())
    # (B, L-1, V): column t predicts token t+1; a text no longer than the window is all prefill, whose last
    # column predicts a token past the text
    out = torch.cat(logits, dim=1)[:, :L - 1]
    return F.cross_entropy(out.transpose(1, 2), ids[:, 1:], reduction="none")


def position_nll(model: nn.Module, input_ids: torch.Tensor, method: str, *, factor: float | None = None,
                 window: int | None = None, sinks: int = 4) -> torch.Tensor:
    """Per-token NLL (nats), (B, L-1), of ``input_ids`` (B, L) under ``method`` (module docstring)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids must be a (B, L) integer tensor with L >= 2, got "
                         f"{tuple(getattr(input_ids, 'shape', ()))}")
    L = input_ids.shape[1]
    model = model.eval()
    if method == "sinks":
        context = model.config.max_seq_len
        if isinstance(sinks, bool) or not isinstance(sinks, int) or not 0 <= sinks < context:
            raise ValueError(f"sinks must be an int in [0, max_seq_len={context}) (a window needs room), got {sinks!r}")
        window = context - sinks if window is None else window
        if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= context - sinks:
            # past sinks + window cached tokens the model would attend beyond the length it was trained at
            raise ValueError(f"window must be an int in [1, max_seq_len - sinks = {context - sinks}], got {window!r}")
        return _streaming_nll(model, input_ids, window=window, sinks=sinks)
    return _full_nll(scaled_model(model, method, max_seq_len=max(L, model.config.max_seq_len), factor=factor),
                     input_ids)


def position_perplexity(model: nn.Module, input_ids: torch.Tensor, *, methods: Sequence[str] = METHODS,
                        bin_size: int = 64, factor: float | None = None, window: int | None = None,
                        sinks: int = 4) -> Any:
    """Perplexity per position bin for each method: a tidy ``pandas.DataFrame`` with columns ``method``,
    ``start``, ``end`` (token positions ``[start, end)`` of the predicted tokens), ``perplexity``, ``nll``
    and ``trained`` (the bin lies inside the model's trained length). Rows are averaged per position."""
    import pandas as pd

    if isinstance(bin_size, bool) or not isinstance(bin_size, int) or bin_size < 1:
        raise ValueError(f"bin_size must be an int >= 1, got {bin_size!r}")
    if isinstance(methods, str):  # a str is a sequence too: "rope" would run the methods "r", "o", ...
        raise ValueError(f"methods must be a sequence of method names from {METHODS}, got the str {methods!r}; "
                         "wrap it in a list")
    trained = model.config.rope_max_position_embeddings or model.config.max_seq_len
    rows = []
    for method in methods:
        nll = position_nll(model, input_ids, method, factor=factor, window=window, sinks=sinks).mean(dim=0)
        length = nll.shape[0] + 1
        for start in range(0, length, bin_size):  # token t is predicted at NLL column t - 1 (token 0: never)
            end = min(start + bin_size, length)
            if end <= 1:
                continue
            mean = float(nll[max(start, 1) - 1:end - 1].double().mean())
            rows.append({"method": method, "start": start, "end": end, "perplexity": math.exp(mean), "nll": mean,
                         "trained": end <= trained})
    return pd.DataFrame(rows)


def heldout_batch(tokenizer: Any, length: int, rows: int) -> torch.Tensor:
    """Up to ``rows`` disjoint ``length``-token rows of the tiny models' held-out text: (B, length) long."""
    from mlcore.training.assets import tiny_heldout_text

    for name, value in (("length", length), ("rows", rows)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    ids = torch.tensor(tokenizer.encode(tiny_heldout_text()), dtype=torch.long)
    n = min(rows, ids.numel() // length)
    if n < 1:
        raise ValueError(f"length={length} exceeds the held-out text ({ids.numel()} tokens)")
    return ids[: n * length].view(n, length)


def plot_position_perplexity(table: Any, *, trained_length: int | None = None, ax: Any = None) -> Any:
    """Perplexity (log scale) against position, one line per method; returns the matplotlib ``Figure``."""
    from mlcore.eval.plots import line_plot

    return line_plot(table, x="start", y="perplexity", group="method", vline=trained_length, ax=ax,
                     xlabel="position of the predicted token", ylabel="perplexity (log scale)", logy=True,
                     title="Perplexity against position past the trained context")
