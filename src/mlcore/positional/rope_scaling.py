"""RoPE frequencies and the context-extension scalings applied to them.

Rotary embeddings (Su et al., 2021, "RoFormer") rotate each 2-D pair ``i`` of a query/key head of rotary
dimension ``d`` by the angle ``m * theta_i`` at position ``m``, with the inverse frequencies

    theta_i = base^(-2i/d),        i = 0 .. d/2 - 1.

A model pretrained on ``L0`` positions has only ever seen angles ``m * theta_i`` with ``m < L0``. The scalings
below change ``theta_i`` so that a longer context maps onto angles the model knows:

* ``linear`` -- position interpolation (Chen et al., 2023): ``theta_i / s`` for every ``i``, i.e. position
  ``m`` is read as ``m / s``.
* ``dynamic`` -- dynamic NTK-aware scaling (bloc97 / emozilla, 2023): for a sequence of length ``L`` the base
  grows to ``base * ((s * L / L0) - (s - 1)) ** (d / (d - 2))`` once ``L > L0`` (unchanged for ``L <= L0``),
  which stretches low frequencies most and leaves the highest frequency ``theta_0 = 1`` alone.
* ``yarn`` -- YaRN (Peng et al., 2023, "Efficient context window extension"): dimensions that turn more than
  ``beta_fast`` times over ``L0`` keep their frequency (extrapolate), dimensions turning fewer than ``beta_slow``
  times are interpolated (``theta_i / s``), and a linear ramp blends the two in between. The pair index that
  makes ``r`` rotations over ``L0`` is ``d * ln(L0 / (2 pi r)) / (2 ln base)``. The logits are tempered by
  scaling cos/sin with ``attention_factor = 0.1 ln(s) + 1`` (or, DeepSeek's variant,
  ``mscale(s, mscale) / mscale(s, mscale_all_dim)`` with ``mscale(s, m) = 0.1 m ln(s) + 1``).
* ``llama3`` -- Llama 3.1: wavelengths ``2 pi / theta_i`` shorter than ``L0 / high_freq_factor`` keep their
  frequency, those longer than ``L0 / low_freq_factor`` are divided by ``s``, and in between
  ``theta_i' = (1 - a) theta_i / s + a theta_i`` with ``a = (L0 / wavelen - low) / (high - low)``.

* ``longrope`` -- LongRoPE (Ding et al., 2024; Phi-3): per-pair rescale factors found by search,
  ``theta_i' = theta_i / lambda_i``, with ``lambda = short_factor`` while the longest position of a call is within
  ``L0`` and ``long_factor`` past it; cos/sin are scaled by ``sqrt(1 + ln(s) / ln(L0))``, ``s`` the context
  ratio (``factor``, else ``max_position_embeddings / L0``).

``rope_inv_freq`` returns ``(inv_freq, attention_factor)`` as Hugging Face's ``ROPE_INIT_FUNCTIONS`` do; the
tests hold every type to transformers' own functions.
"""

from __future__ import annotations

import math
import warnings
from numbers import Real
from typing import Any

import torch

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3", "longrope")

# Keys each type needs in the scaling dict ("factor" is checked separately; YaRN may infer it).
_REQUIRED: dict[str, tuple[str, ...]] = {
    "default": (),
    "linear": ("factor",),
    "dynamic": ("factor",),
    "yarn": ("factor", "original_max_position_embeddings"),
    "llama3": ("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"),
    "longrope": ("short_factor", "long_factor", "original_max_position_embeddings"),
}
# Types whose angles depend on the longest position of the forward call, not on the position alone.
PER_CALL_TYPES = ("dynamic", "longrope")


def rope_type_of(scaling: dict[str, Any] | None) -> str:
    """The ``rope_type`` of an HF-style scaling dict (``None`` -> ``"default"``; the old key ``type`` is read too)."""
    if scaling is None:
        return "default"
    if not isinstance(scaling, dict):
        raise ValueError(f"scaling must be a dict or None, got {type(scaling).__name__}")
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"scaling['rope_type'] must be one of {ROPE_TYPES}, got {rope_type!r}")
    return rope_type


def validate_scaling(scaling: dict[str, Any] | None, *, warn: bool = True) -> str:
    """Check an HF-style scaling dict; return its ``rope_type``. Raises ``ValueError`` naming the bad key.

    ``warn`` emits the ``factor < 1`` ``UserWarning``; callers that already validated the same dict (a module
    rebuilding its frequencies) pass ``False`` so the warning appears once per construction.
    """
    rope_type = rope_type_of(scaling)
    if scaling is None:
        return rope_type
    missing = [k for k in _REQUIRED[rope_type] if k not in scaling]
    if missing:
        raise ValueError(
            f"scaling with rope_type={rope_type!r} needs keys {list(_REQUIRED[rope_type])}; missing {missing}"
        )
    factor = scaling.get("factor")
    if rope_type != "default" and not (rope_type in ("yarn", "longrope") and factor is None):
        # nan passes ``<= 0`` and inf divides every frequency to 0: both would give silently wrong angles
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0:
            raise ValueError(f"scaling['factor'] must be a positive finite number, got {factor!r}")
        if factor < 1.0 and warn:  # transformers only warns here and runs, so we do the same
            warnings.warn(f"scaling['factor'] = {factor} < 1 compresses positions instead of stretching them",
                          stacklevel=3)
    # Keys the formulas divide by or take the log of: a zero or negative value would end in a bare math error
    for key in ("original_max_position_embeddings", "low_freq_factor", "high_freq_factor", "beta_fast",
                "beta_slow", "attention_factor"):
        value = scaling.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value <= 0):
            raise ValueError(f"scaling[{key!r}] must be a positive number, got {value!r}")
    for key in ("mscale", "mscale_all_dim"):  # YaRN's temperature: 0.1 * mscale * ln(s) + 1 (0 or None: unused)
        value = scaling.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise ValueError(f"scaling[{key!r}] must be a finite number or None, got {value!r}")
    if rope_type == "longrope":  # theta_i / lambda_i: a zero gives inf angles (NaN cos/sin), a negative turns backwards
        for key in ("short_factor", "long_factor"):
            values = scaling[key]
            if isinstance(values, (list, tuple)) and not all(
                    not isinstance(f, bool) and isinstance(f, (int, float)) and math.isfinite(f) and f > 0
                    for f in values):
                raise ValueError(f"scaling[{key!r}] must hold positive finite numbers, got {values!r}")
    if rope_type == "longrope" and scaling.get("original_max_position_embeddings") == 1:
        raise ValueError("scaling['original_max_position_embeddings'] must be > 1 for longrope (its attention "
                         "factor divides by log(original length))")
    if rope_type == "llama3" and not scaling["high_freq_factor"] > scaling["low_freq_factor"]:
        raise ValueError(
            "scaling['high_freq_factor'] must be > scaling['low_freq_factor'], got "
            f"{scaling['high_freq_factor']} and {scaling['low_freq_factor']}"
        )
    return rope_type


def default_inv_freq(dim: int, base: float | torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """``theta_i = base^(-2i/dim)`` for ``i = 0 .. dim/2 - 1``: shape ``(dim/2,)``, float32 (Su et al., 2021)."""
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim
    return 1.0 / (base**exponents)


def _linear(dim: int, base: float, s: dict[str, Any]) -> tuple[torch.Tensor, float]:
    # Position interpolation: angle(m) = (m / s) * theta_i = m * (theta_i / s).
    return default_inv_freq(dim, base) / s["factor"], 1.0


def _dynamic(
    dim: int, base: float, s: dict[str, Any], max_pos: int, seq_len: int | torch.Tensor | None
) -> tuple[torch.Tensor, float]:
    # NTK-aware: enlarge the base so the lowest frequency is interpolated by ~ L/L0 while theta_0 stays 1.
    factor = s["factor"]
    if isinstance(seq_len, torch.Tensor):
        # A 0-d integer tensor (the longest position + 1 of a forward call): the new base is then computed in
        # float32 tensor arithmetic, exactly as transformers' forward does. Its rounding differs from the Python
        # float path by ~1e-7 relative, which moves angles at positions ~1e5 by ~1e-3 rad.
        seq_len = torch.maximum(seq_len, torch.tensor(max_pos, dtype=seq_len.dtype, device=seq_len.device))
    else:
        seq_len = max_pos if seq_len is None else max(int(seq_len), max_pos)
    new_base = base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
    # a 0-d CUDA base needs CUDA exponents (a CPU tensor cannot take a CUDA scalar)
    device = new_base.device if isinstance(new_base, torch.Tensor) else None
    return default_inv_freq(dim, new_base, device=device), 1.0


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature ``0.1 * mscale * ln(scale) + 1`` (1 for ``scale <= 1``)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(dim: int, base: float, s: dict[str, Any], max_pos: int) -> tuple[torch.Tensor, float]:
    orig = s["original_max_position_embeddings"]
    factor = s.get("factor")
    if factor is None:  # DeepSeek-V3 style configs: the factor is the ratio of context lengths
        factor = max_pos / orig
    attention_factor = s.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = s.get("mscale"), s.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = _yarn_mscale(factor)
    beta_fast = s.get("beta_fast") or 32
    beta_slow = s.get("beta_slow") or 1

    def pair_index_for(rotations: float) -> float:
        # Pair i turns L0 * theta_i / (2 pi) times over the original context; solve that for i (in units of dims).
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = pair_index_for(beta_fast), pair_index_for(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp

    wavelength_scale = base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)  # 1 / theta_i
    theta, theta_interp = 1.0 / wavelength_scale, 1.0 / (factor * wavelength_scale)  # rounded as transformers does
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1 for fast-turning pairs (extrapolate), 0 for slow ones (interpolate)
    inv_freq = theta_interp * (1 - keep) + theta * keep
    return inv_freq, float(attention_factor)


def _llama3(dim: int, base: float, s: dict[str, Any]) -> tuple[torch.Tensor, float]:
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    orig = s["original_max_position_embeddings"]
    theta = default_inv_freq(dim, base)
    wavelen = 2 * math.pi / theta
    long_wave = wavelen > orig / low  # low frequencies: interpolate fully
    short_wave = wavelen < orig / high  # high frequencies: keep
    a = (orig / wavelen - low) / (high - low)  # 0 at the long edge of the band, 1 at the short edge
    smoothed = (1 - a) * theta / factor + a * theta
    inv_freq = torch.where(long_wave, theta / factor, torch.where(short_wave, theta, smoothed))
    return inv_freq, 1.0


def _longrope(dim: int, base: float, s: dict[str, Any], max_pos: int,
              seq_len: int | None) -> tuple[torch.Tensor, float]:
    orig = s["original_max_position_embeddings"]
    for key in ("short_factor", "long_factor"):
        if not isinstance(s[key], (list, tuple)) or len(s[key]) != dim // 2:
            raise ValueError(f"scaling[{key!r}] must list one factor per rotary pair ({dim // 2}), got {s[key]!r}")
    factor = s.get("factor") or max_pos / orig  # Phi-3 gives the ratio of context lengths instead
    attention_factor = s.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(orig))
    ext = torch.tensor(s["long_factor"] if seq_len is not None and seq_len > orig else s["short_factor"],
                       dtype=torch.float32)
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    return 1.0 / (ext * base**exponents), float(attention_factor)


def rope_inv_freq(
    head_dim: int,
    *,
    base: float = 10000.0,
    scaling: dict[str, Any] | None = None,
    max_position_embeddings: int = 2048,
    seq_len: int | torch.Tensor | None = None,
    warn: bool = True,
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies ``(head_dim/2,)`` float32 and the cos/sin ``attention_factor`` for a RoPE scaling.

    ``head_dim`` is the rotary dimension (even). ``scaling`` is an HF-style dict (see module docstring);
    ``max_position_embeddings`` is ``L0`` for ``dynamic`` (as transformers uses it) and YaRN's fallback for a
    missing ``factor``. ``seq_len`` only matters for ``dynamic``: the length the frequencies are built for (an int,
    or a 0-d integer tensor to get transformers' float32 forward-pass arithmetic), and for ``longrope``: past
    ``original_max_position_embeddings`` the long factors apply. ``warn=False`` silences the
    ``factor < 1`` warning (for callers that validated ``scaling`` already, see :func:`validate_scaling`).
    """
    if not isinstance(head_dim, int) or head_dim < 2 or head_dim % 2:
        raise ValueError(f"head_dim (rotary dimension) must be an even int >= 2, got {head_dim!r}")
    if isinstance(base, bool) or not isinstance(base, Real) or not math.isfinite(base) or not base > 1:
        raise ValueError(f"base must be a finite number > 1, got {base!r}")  # inf: every theta_i but the first is 0
    if max_position_embeddings < 1:
        raise ValueError(f"max_position_embeddings must be >= 1, got {max_position_embeddings}")
    rope_type = validate_scaling(scaling, warn=warn)
    if rope_type == "default":
        return default_inv_freq(head_dim, base), 1.0
    if rope_type == "linear":
        return _linear(head_dim, base, scaling)
    if rope_type == "dynamic":
        if head_dim == 2:
            raise ValueError("head_dim must be > 2 for dynamic NTK scaling (exponent d / (d - 2))")
        return _dynamic(head_dim, base, scaling, max_position_embeddings, seq_len)
    if rope_type == "yarn":
        return _yarn(head_dim, base, scaling, max_position_embeddings)
    if rope_type == "longrope":
        return _longrope(head_dim, base, scaling, max_position_embeddings,
                         None if seq_len is None else int(seq_len))
    return _llama3(head_dim, base, scaling)
