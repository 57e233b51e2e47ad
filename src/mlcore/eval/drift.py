"""Distribution drift on input features: population stability index, KL and Jensen-Shannon divergence.

All logarithms are natural (nats) unless ``base`` is given, as ``scipy.stats.entropy`` does.

* **PSI** (credit-scoring practice; Yurdakul 2018): bin the reference sample into ``bins`` quantile bins
  (edges from the reference's quantiles, outer edges open, so each reference bin holds ~1/bins), count both
  samples in the same bins, and

      PSI = sum_b (c_b - r_b) * ln(c_b / r_b)

  with ``r_b``, ``c_b`` the reference / current shares. An empty bin would make ``ln`` infinite, so every
  share is floored at ``eps`` (default 1e-4) before the formula (the shares are not renormalised). Common
  reading: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 large shift. ``categorical=True`` uses one bin per
  category seen in either sample instead of quantiles. PSI is the symmetrised KL divergence
  ``KL(c || r) + KL(r || c)`` of the binned shares.
* **KL divergence** ``KL(p || q) = sum_i p_i log(p_i / q_i)`` of two distributions over the same support
  (normalised first); ``inf`` where ``q_i = 0 < p_i``, as scipy.
* **Jensen-Shannon divergence** ``JS(p, q) = (KL(p || m) + KL(q || m)) / 2`` with ``m = (p + q) / 2``:
  symmetric, finite, at most ``log(2)`` (1 in base 2). SciPy's ``jensenshannon`` returns its square root
  (the JS *distance*).

``histograms`` turns two raw samples into shares over common bins, for KL / JS on a continuous feature.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from numbers import Real
from typing import Any

import numpy as np

from mlcore.eval._checks import as_float_array, check_positive_int

PSI_EPS = 1e-4


def _distribution(name: str, p: Any) -> np.ndarray:
    arr = as_float_array(name, p)
    if (arr < 0).any():
        raise ValueError(f"{name} must be non-negative (probabilities or counts), got min {arr.min():.3g}")
    total = arr.sum()
    if total <= 0:
        raise ValueError(f"{name} must have a positive sum, got {total}")
    return arr / total


def _pair(p: Any, q: Any) -> tuple[np.ndarray, np.ndarray]:
    p, q = _distribution("p", p), _distribution("q", q)
    if p.shape != q.shape:
        raise ValueError(f"p and q must be over the same support, got lengths {p.shape[0]} and {q.shape[0]}")
    return p, q


def _log_base(base: float | None) -> float:
    if base is None:
        return 1.0
    if isinstance(base, bool) or not isinstance(base, Real) or not base > 0 or base == 1:
        raise ValueError(f"base must be a positive number != 1 (or None: nats), got {base!r}")
    return math.log(base)


def kl_divergence(p: Any, q: Any, *, base: float | None = None) -> float:
    """``KL(p || q)``; ``p``, ``q`` (K,) probabilities or counts (normalised), natural log unless ``base``."""
    p, q = _pair(p, q)
    scale = _log_base(base)
    support = p > 0
    if (q[support] == 0).any():
        return math.inf
    return float((p[support] * np.log(p[support] / q[support])).sum() / scale)


def js_divergence(p: Any, q: Any, *, base: float | None = None) -> float:
    """Jensen-Shannon divergence (not the distance: equals ``scipy.spatial.distance.jensenshannon(p, q) ** 2``)."""
    p, q = _pair(p, q)
    m = (p + q) / 2
    return (kl_divergence(p, m, base=base) + kl_divergence(q, m, base=base)) / 2


def quantile_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Inner bin edges at the reference's ``k / bins`` quantiles (duplicates dropped): (<= bins - 1,)."""
    return np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))


def histograms(reference: Any, current: Any, *, bins: int = 10, categorical: bool = False,
               min_samples: int = 1) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """Shares of ``reference`` and ``current`` over common bins: quantile bins of the reference (numeric) or
    one bin per category (``categorical``). Returns ``(ref_shares, cur_shares, labels)``."""
    check_positive_int("bins", bins, 2)
    check_positive_int("min_samples", min_samples, 0)
    if categorical:
        for name, values in (("reference", reference), ("current", current)):
            if isinstance(values, (str, bytes)):
                raise ValueError(f"{name} must be a sequence of category labels, got one {type(values).__name__} "
                                 "(it would be read one character per sample); wrap it in a list")
        ref, cur = list(reference), list(current)
        for name, values in (("reference", ref), ("current", cur)):
            if any(not isinstance(v, Hashable) for v in values):
                raise ValueError(f"{name} holds an unhashable category label (a list or dict?); use str or int labels")
            if len(values) < min_samples:
                raise ValueError(f"{name} needs at least {min_samples} sample(s), got {len(values)}")
            # Real, not float: a NumPy float32 NaN is no float, and each NaN (hashed by identity) became a category
            if any(v is None or (isinstance(v, Real) and math.isnan(v)) for v in values):
                raise ValueError(f"{name} holds None / NaN categories; label them (e.g. 'unknown') first")
        labels = sorted(set(ref) | set(cur), key=str)
        index = {c: i for i, c in enumerate(labels)}
        r = np.bincount([index[v] for v in ref], minlength=len(labels)) / len(ref)
        c = np.bincount([index[v] for v in cur], minlength=len(labels)) / len(cur)
        return r, c, labels
    ref = as_float_array("reference", reference, min_len=min_samples)
    cur = as_float_array("current", current, min_len=min_samples)
    edges = quantile_edges(ref, bins)
    # bin b = (edges[b-1], edges[b]]: the outer bins are open to -inf / +inf
    r = np.bincount(np.searchsorted(edges, ref, side="left"), minlength=edges.size + 1) / ref.size
    c = np.bincount(np.searchsorted(edges, cur, side="left"), minlength=edges.size + 1) / cur.size
    labels = [(lo, hi) for lo, hi in zip(np.r_[-np.inf, edges], np.r_[edges, np.inf])]
    return r, c, labels


def check_eps(eps: Any) -> float:
    """``eps`` if it is a number in (0, 1), else a ValueError: 0 gives ``inf`` on an empty bin, >= 1 floors every
    share to the same value (PSI 0 whatever the drift)."""
    if isinstance(eps, bool) or not isinstance(eps, Real) or not 0 < eps < 1:
        raise ValueError(f"eps must be a number in (0, 1) (it floors the share of an empty bin), got {eps!r}")
    return float(eps)


def psi_from_shares(ref_shares: Sequence[float], cur_shares: Sequence[float], *, eps: float = PSI_EPS) -> float:
    """``sum (c - r) ln(c / r)`` with shares floored at ``eps``."""
    r = np.maximum(np.asarray(ref_shares, dtype=np.float64), eps)
    c = np.maximum(np.asarray(cur_shares, dtype=np.float64), eps)
    if r.shape != c.shape:
        raise ValueError(f"ref_shares and cur_shares must have the same length, got {r.shape} and {c.shape}")
    return float(((c - r) * np.log(c / r)).sum())


def psi(reference: Any, current: Any, *, bins: int = 10, categorical: bool = False, eps: float = PSI_EPS,
        min_samples: int = 1) -> float:
    """Population stability index of ``current`` against ``reference`` (module docstring).

    ``reference``, ``current``: 1-D samples (numbers, or category labels with ``categorical=True``).
    ``min_samples``: refuse samples smaller than this (a monitor's guard against noisy small windows).
    """
    check_eps(eps)
    r, c, _ = histograms(reference, current, bins=bins, categorical=categorical, min_samples=min_samples)
    return psi_from_shares(r, c, eps=eps)
