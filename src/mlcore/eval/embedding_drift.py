"""Embedding drift: mean cosine shift and the maximum mean discrepancy with a permutation test.

* **Cosine shift** ``1 - cos(mean(X), mean(Y))``: how far the centroid of the current embeddings turned
  from the reference's (0 = same direction, up to 2). Cheap, blind to changes that keep the mean.
* **MMD** (Gretton et al. 2012, "A Kernel Two-Sample Test"), with the RBF kernel
  ``k(a, b) = exp(-||a - b||^2 / (2 sigma^2))``, unbiased estimator (U-statistic)

      MMD^2 = 1/(n(n-1)) sum_{i!=j} k(x_i, x_j) + 1/(m(m-1)) sum_{i!=j} k(y_i, y_j) - 2/(nm) sum_{i,j} k(x_i, y_j)

  ``sigma`` defaults to the median heuristic (median pairwise distance of the pooled sample).
  **Permutation test**: under "no drift" the labels reference / current are exchangeable, so shuffle the
  pooled sample ``n_permutations`` times (a ``torch.Generator`` seeded per call), recompute MMD^2 and report
  ``p = (1 + #{MMD^2_perm >= MMD^2_obs}) / (1 + n_permutations)``. The kernel matrix is computed once.

Shapes: ``reference`` (N, D), ``current`` (M, D).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any

import torch


def _embeddings(name: str, x: Any, min_rows: int) -> torch.Tensor:
    try:
        t = torch.as_tensor(x).detach().to(torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be numeric (N, D) embeddings, got {type(x).__name__}: {err}") from None
    if t.dim() != 2:
        raise ValueError(f"{name} must have shape (N, D), got {tuple(t.shape)}")
    if t.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {t.shape[0]}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return t


def _pair(reference: Any, current: Any, min_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _embeddings("reference", reference, min_rows), _embeddings("current", current, min_rows)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"reference and current must have the same dimension D, got {x.shape[1]} and {y.shape[1]}"
                         " (embedded by different models?)")
    return x, y.to(x.device)


def cosine_shift(reference: Any, current: Any) -> float:
    """``1 - cos(mean(reference), mean(current))``; inputs (N, D) and (M, D)."""
    x, y = _pair(reference, current, 1)
    a, b = x.mean(dim=0), y.mean(dim=0)
    if float(a.norm()) == 0 or float(b.norm()) == 0:
        raise ValueError("a mean embedding is the zero vector: its direction (and cosine) is undefined")
    # written out (scipy's cosine distance): F.cosine_similarity clamps each norm at eps = 1e-8, so means
    # shorter than that came out wrong (two equal means of norm 1e-9 gave a shift of 0.97)
    a, b = a / a.norm(), b / b.norm()
    return float(1 - (a @ b).clamp(-1.0, 1.0))


def median_bandwidth(pooled: torch.Tensor) -> float:
    """Median heuristic: the median of the pairwise Euclidean distances (i < j) of ``pooled`` (N, D)."""
    return _median_distance(_distances(pooled))


def _distances(pooled: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances (N, N) of the rows of ``pooled``, computed after centring them: distances do
    not move, and cdist's matrix-product path no longer cancels a large common offset (rows 1e6 from the origin,
    1e-2 from each other: MMD^2 was off by 70 %)."""
    pooled = pooled - pooled.mean(dim=0)
    return torch.cdist(pooled, pooled)


def _median_distance(d: torch.Tensor) -> float:
    """The median of the distances above the diagonal of ``d`` (N, N); 1.0 when it is 0."""
    i, j = torch.triu_indices(d.shape[0], d.shape[0], offset=1)
    pairs = d[i, j]
    # numpy's median (the midpoint of the two middle values for an even count); kthvalue, unlike quantile,
    # has no 2**24-element limit, which 5,794 pooled rows already pass
    lower = pairs.kthvalue((pairs.numel() + 1) // 2).values
    upper = pairs.kthvalue(pairs.numel() // 2 + 1).values
    sigma = float((lower + upper) / 2)
    return sigma if sigma > 0 else 1.0


def _mmd2_from_kernel(k: torch.Tensor, idx_x: torch.Tensor, idx_y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 for the rows ``idx_x`` vs ``idx_y`` of the pooled kernel matrix ``k`` (P, P); batched:
    ``idx_x`` (R, n), ``idx_y`` (R, m) -> (R,)."""
    n, m = idx_x.shape[1], idx_y.shape[1]
    kxx = k[idx_x[:, :, None], idx_x[:, None, :]]  # (R, n, n)
    kyy = k[idx_y[:, :, None], idx_y[:, None, :]]
    kxy = k[idx_x[:, :, None], idx_y[:, None, :]]
    sxx = (kxx.sum(dim=(1, 2)) - kxx.diagonal(dim1=1, dim2=2).sum(dim=1)) / (n * (n - 1))
    syy = (kyy.sum(dim=(1, 2)) - kyy.diagonal(dim1=1, dim2=2).sum(dim=1)) / (m * (m - 1))
    return sxx + syy - 2 * kxy.mean(dim=(1, 2))


@dataclass(frozen=True)
class MMDResult:
    """``mmd2`` (unbiased), ``p_value`` of the permutation test, the kernel ``bandwidth`` and permutations run."""

    mmd2: float
    p_value: float
    bandwidth: float
    n_permutations: int


def mmd2(reference: Any, current: Any, *, bandwidth: float | None = None) -> float:
    """Unbiased MMD^2 with an RBF kernel (median-heuristic ``bandwidth`` if None)."""
    return mmd_permutation_test(reference, current, bandwidth=bandwidth, n_permutations=0).mmd2


def mmd_permutation_test(reference: Any, current: Any, *, bandwidth: float | None = None,
                         n_permutations: int = 200, seed: int = 0, chunk: int = 50) -> MMDResult:
    """MMD^2 and its permutation p-value (module docstring); ``seed`` feeds a per-call ``torch.Generator``."""
    x, y = _pair(reference, current, 2)
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, int) or n_permutations < 0:
        raise ValueError(f"n_permutations must be an int >= 0, got {n_permutations!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int (permutations per batch), got {chunk!r}")
    if bandwidth is not None and (isinstance(bandwidth, bool) or not isinstance(bandwidth, Real)):
        raise ValueError(f"bandwidth must be a number > 0 or None (median heuristic), got {bandwidth!r}")
    d = _distances(torch.cat([x, y]))  # (P, P), once: the median heuristic and the kernel both read it
    sigma = _median_distance(d) if bandwidth is None else float(bandwidth)
    if not 0 < sigma < math.inf:  # inf made every kernel value 1: MMD^2 = 0, p = 1 whatever the drift
        raise ValueError(f"bandwidth must be a finite number > 0, got {bandwidth}")
    # (d / sigma)^2 rather than d^2 / sigma^2: sigma**2 overflows past 1e154 and underflows to 0 (NaN) below 1e-162
    k = torch.exp(-0.5 * (d / sigma).pow(2))  # (P, P)
    n, P = x.shape[0], d.shape[0]
    order = torch.arange(P, device=k.device)
    observed = float(_mmd2_from_kernel(k, order[None, :n], order[None, n:])[0])
    if n_permutations == 0:
        return MMDResult(observed, float("nan"), sigma, 0)
    gen = torch.Generator().manual_seed(seed)
    exceed = 0
    for start in range(0, n_permutations, chunk):
        r = min(chunk, n_permutations - start)
        perms = torch.argsort(torch.rand(r, P, generator=gen), dim=1).to(k.device)  # (r, P) permutations
        stats = _mmd2_from_kernel(k, perms[:, :n], perms[:, n:])
        exceed += int((stats >= observed).sum())
    return MMDResult(observed, (1 + exceed) / (1 + n_permutations), sigma, n_permutations)
