"""Next-token sampling: repetition penalty, temperature, top-k, top-p (nucleus), then a draw.

One decode step turns the model's last-position logits ``z`` (B, V) into a token per row. In the order
transformers' ``generate`` builds its processor list (``GenerationMixin._get_logits_processor``:
repetition penalty first, among the processors applied even when greedy, then the sampling "warpers"
temperature -> top-k -> top-p):

1. **Repetition penalty** (CTRL, Keskar et al. 2019, arXiv:1909.05858, in transformers' form): for every token
   ``v`` present in the row's previous ids, ``z_v <- z_v * r`` if ``z_v < 0`` else ``z_v / r`` (so ``r > 1``
   always lowers the token). Applied once per distinct token, however often it occurred.
2. **Temperature**: ``z <- z / T``. ``T -> 0`` is the argmax (greedy), ``T = 1`` the model's distribution.
3. **Top-k** (Fan et al. 2018): keep the tokens whose logit is ``>=`` the k-th largest (ties at the k-th value
   are all kept, as in transformers).
4. **Top-p / nucleus** (Holtzman et al. 2020): keep the smallest set of most probable tokens whose probability
   sums to ``>= p``. Computed as transformers does: sort ascending, drop a token when the cumulative
   probability up to and including it is ``<= 1 - p``, always keep the most probable token.

Filtered tokens get ``-inf`` so the softmax gives them probability 0. Then ``sample_next`` draws
``x ~ softmax(z)`` with a per-call ``torch.Generator`` (never the global RNG), or takes ``argmax z``.

Pads and the repetition penalty: transformers' ``generate`` (the installed 5.x) passes the number of *leading* zeros of
the attention mask as ``prompt_ignore_length``, so left pads are not penalised. Here ``prev_mask`` (B, T)
excludes every position where the mask is 0; for left-padded prompts (the only padding ``generate``
accepts) the two are identical. A mask with interior zeros differs: transformers would still penalise
those tokens, we do not. Tokens appended after a row stops are not the caller's concern here: that row's
output is discarded.

Everything is batched, free of host synchronisation (no ``.item()``, no data-dependent Python branches) and
device-agnostic; half-precision logits are promoted to float32 first, as ``generate`` does.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch
from torch import Tensor

# Temperatures below this decode greedily (vLLM's ``_SAMPLING_EPS``, the same rule; ``mlcore.serve`` uses it too):
# for tiny T, ``logits / T`` overflows float32 to +inf for every positive logit (1e-300 is 0.0 in float32, a
# division by zero), softmax turns the infs into NaN and the draw raises. Greedy is the T -> 0 limit.
GREEDY_BELOW = 1e-5


def is_greedy(temperature: float) -> bool:
    """True when ``temperature`` (validated, >= 0) means argmax decoding: 0, or below :data:`GREEDY_BELOW`.

    A decoding loop needs a number here: None (which the logits processors read as "no scaling") is refused by
    name rather than compared (a bare ``TypeError`` from ``None < float``)."""
    if temperature is None:
        raise ValueError("temperature must be a real number >= 0 for decoding (0 = greedy), got None")
    return temperature < GREEDY_BELOW


__all__ = [
    "GREEDY_BELOW",
    "is_greedy",
    "validate_sampling_args",
    "presence_mask",
    "apply_repetition_penalty",
    "apply_temperature",
    "apply_top_k",
    "apply_top_p",
    "process_logits",
    "sample_next",
    "make_generator",
]

_FILTERED = float("-inf")


def _is_real(x: object) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


def validate_sampling_args(
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float | None = None,
) -> None:
    """Raise ``ValueError`` naming the argument when a sampling knob is out of range or of the wrong type.

    temperature: None or a finite real >= 0 (0 = greedy). top_k: None or an int >= 1. top_p: None or a real
    in (0, 1]. repetition_penalty: None or a finite real > 0 (1 = no penalty). Pure Python; no tensor work.
    """
    if temperature is not None:
        if not _is_real(temperature) or not math.isfinite(temperature):
            raise ValueError(f"temperature must be a finite real number >= 0, got {temperature!r}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None:
        if not isinstance(top_k, Integral) or isinstance(top_k, bool):
            raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r} of type {type(top_k).__name__}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None:
        if not _is_real(top_p):
            raise ValueError(f"top_p must be None or a real number in (0, 1], got {top_p!r}")
        if not 0.0 < top_p <= 1.0:  # also False for NaN
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if repetition_penalty is not None:
        if not _is_real(repetition_penalty) or not math.isfinite(repetition_penalty):
            raise ValueError(f"repetition_penalty must be None or a finite real > 0, got {repetition_penalty!r}")
        if repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 = no penalty), got {repetition_penalty!r}")


def _check_logits(logits: Tensor) -> None:
    if not isinstance(logits, Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        seen = f"{tuple(logits.shape)} {logits.dtype}" if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a floating (B, V) tensor, got {seen}")


def presence_mask(prev_ids: Tensor, vocab_size: int, prev_mask: Tensor | None = None) -> Tensor:
    """Bool (B, V): True where token v occurs in row b of ``prev_ids`` (B, T) at a position with mask != 0.

    Ids >= ``vocab_size`` (an embedding larger than the head) are ignored, as in transformers. A caller that
    decodes step by step can keep this mask and update it with ``mask.scatter_(1, new_ids[:, None], True)``
    instead of rescanning the history every step.
    """
    if not isinstance(prev_ids, Tensor) or prev_ids.dim() != 2 or prev_ids.dtype not in (torch.long, torch.int):
        seen = f"{tuple(prev_ids.shape)} {prev_ids.dtype}" if isinstance(prev_ids, Tensor) else repr(prev_ids)
        raise ValueError(f"prev_ids must be an integer (B, T) tensor, got {seen}")
    if prev_ids.numel() and int(prev_ids.min()) < 0:
        raise ValueError(f"prev_ids must be token ids >= 0, got {int(prev_ids.min())}")
    ids = prev_ids.long().clamp(max=vocab_size)  # out-of-head ids land in the spare column V, dropped below
    if prev_mask is not None:
        if not isinstance(prev_mask, Tensor) or prev_mask.shape != prev_ids.shape:
            seen = tuple(prev_mask.shape) if isinstance(prev_mask, Tensor) else repr(prev_mask)
            raise ValueError(f"prev_mask must have prev_ids' shape {tuple(prev_ids.shape)}, got {seen}")
        ids = ids.masked_fill(prev_mask == 0, vocab_size)  # pads go to the spare column too
    present = torch.zeros(ids.shape[0], vocab_size + 1, dtype=torch.bool, device=ids.device)
    present.scatter_(1, ids, True)
    return present[:, :vocab_size]


def apply_repetition_penalty(logits: Tensor, present: Tensor, penalty: float) -> Tensor:
    """CTRL penalty on the tokens in ``present`` (B, V) bool: ``z * r`` where ``z < 0``, else ``z / r``."""
    if not isinstance(present, Tensor) or present.dtype != torch.bool:
        raise ValueError(f"present must be a bool (B, V) tensor (from presence_mask), got "
                         f"{present.dtype if isinstance(present, Tensor) else type(present).__name__}")
    if present.shape != logits.shape:
        raise ValueError(f"present must have the logits' shape {tuple(logits.shape)}, got {tuple(present.shape)}")
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(present, penalised, logits)


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """``z / T`` for ``T > 0``."""
    return logits / temperature


def apply_top_k(logits: Tensor, top_k: int) -> Tensor:
    """Keep the logits ``>=`` the k-th largest of each row (ties at the k-th value all stay); others -> -inf."""
    k = min(top_k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, _FILTERED)


def apply_top_p(logits: Tensor, top_p: float) -> Tensor:
    """Nucleus filter: keep the smallest most-probable set with total probability >= ``top_p``; others -> -inf.

    Sorted ascending, token j (in sorted order) is dropped when ``sum_{i <= j} prob_i <= 1 - top_p``: the mass
    strictly below it already covers what may be removed. The last (most probable) token is always kept.
    """
    ascending, order = torch.sort(logits, dim=-1, descending=False)
    cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)  # (B, V), ends at 1
    drop_sorted = cumulative <= (1.0 - top_p)
    drop_sorted[..., -1] = False  # min_tokens_to_keep = 1
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, _FILTERED)


def process_logits(
    logits: Tensor,
    *,
    temperature: float | None = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float | None = None,
    prev_ids: Tensor | None = None,
    prev_mask: Tensor | None = None,
    present: Tensor | None = None,
) -> Tensor:
    """Apply repetition penalty, temperature, top-k, top-p to ``logits`` (B, V); return new logits (B, V).

    temperature: ``0`` (greedy) applies only the repetition penalty (as transformers with ``do_sample=False``:
    the filters cannot change the argmax); ``None`` or ``1`` leaves the scale alone.
    top_k / top_p: ``None`` (or ``top_p = 1``) disables the filter.
    repetition_penalty: ``None`` or ``1`` disables it; otherwise ``prev_ids`` (B, T) with optional ``prev_mask``
    (B, T) (0 = pad, excluded), or a precomputed ``present`` (B, V) bool from :func:`presence_mask`.
    Returned logits are float32 for half inputs (float32 / float64 kept); filtered tokens are ``-inf``.
    """
    validate_sampling_args(temperature, top_k, top_p, repetition_penalty)
    _check_logits(logits)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if repetition_penalty is not None and repetition_penalty != 1.0:
        if present is None:
            if prev_ids is None:
                raise ValueError("repetition_penalty needs prev_ids (B, T) or present (B, V); got neither")
            if prev_ids.dim() != 2 or prev_ids.shape[0] != logits.shape[0]:
                raise ValueError(
                    f"prev_ids must be (B, T) with B = {logits.shape[0]} (the logits' rows), got {tuple(prev_ids.shape)}"
                )
            present = presence_mask(prev_ids, logits.shape[-1], prev_mask)
        logits = apply_repetition_penalty(logits, present, float(repetition_penalty))
    if temperature == 0:
        return logits
    if temperature is not None and temperature != 1.0:
        logits = apply_temperature(logits, float(temperature))
    if top_k is not None:
        logits = apply_top_k(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = apply_top_p(logits, float(top_p))
    return logits


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A local generator on ``device``: seeded with ``seed``, or non-deterministically (the OS's entropy) if None.

    Neither branch reads or advances the global RNG (``torch.Generator.seed`` draws from std::random_device).
    """
    if seed is not None and (not isinstance(seed, Integral) or isinstance(seed, bool)
                             or not -(2**63) <= seed < 2**64):
        raise ValueError(f"seed must be None or an int in [-2**63, 2**64), got {seed!r}")
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


def sample_next(logits: Tensor, *, generator: torch.Generator | None, greedy: bool = False) -> Tensor:
    """One token per row from processed ``logits`` (B, V): ``argmax`` if ``greedy``, else ``x ~ softmax(z)``.

    The draw uses ``generator`` (on the logits' device); with ``generator=None`` a fresh, non-deterministically
    seeded local one is made, so the global RNG is never read or advanced. Returns (B,) int64.
    """
    _check_logits(logits)
    if greedy:
        return logits.argmax(dim=-1)
    if generator is None:
        generator = make_generator(None, logits.device)
    elif generator.device.type != logits.device.type:
        raise ValueError(f"generator is on {generator.device}, logits on {logits.device}; they must match")
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
