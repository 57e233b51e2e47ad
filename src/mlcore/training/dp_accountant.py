"""Renyi-DP accountant for the sampled Gaussian mechanism, and its conversion to (epsilon, delta).

One DP-SGD step adds ``N(0, sigma^2 C^2)`` noise to a sum of per-example gradients clipped to norm ``C``, over a
batch that holds each example independently with probability ``q`` (Poisson sampling). Mironov, Talwar & Zhang
(2019), "Renyi Differential Privacy of the Sampled Gaussian Mechanism", section 3.3, give its Renyi divergence
of order ``alpha`` as ``RDP(alpha) = log(A_alpha) / (alpha - 1)`` with

    A_alpha = E_{z ~ mu_0} [ (mu(z) / mu_0(z))^alpha ],   mu_0 = N(0, sigma^2),  mu = (1 - q) mu_0 + q N(1, sigma^2)

- integer ``alpha``:  A_alpha = sum_{i=0}^{alpha} binom(alpha, i) (1 - q)^(alpha - i) q^i exp((i^2 - i) / (2 sigma^2))
- fractional ``alpha``: the same binomial series, now infinite, split at ``z0 = sigma^2 log(1/q - 1) + 1/2``
  into two halves, each term weighted by a Gaussian tail ``erfc`` (the paper's equations (3)-(4)).

RDP composes by addition: ``T`` steps cost ``T * RDP(alpha)``. The conversion to (epsilon, delta)-DP is Balle
et al. (2020), "Hypothesis Testing Interpretations and Renyi Differential Privacy", Theorem 21:

    epsilon = min_alpha  RDP(alpha) + log((alpha - 1) / alpha) - (log(delta) + log(alpha)) / (alpha - 1)

The minimum runs over the same orders Opacus' ``RDPAccountant`` uses (1.1, 1.2, ..., 10.9, then 12 ... 63), so
the two report the same epsilon; a finer grid would give a (slightly) smaller one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real  # numpy scalars register here too

import numpy as np
from scipy import special

# 1.1 ... 10.9 in steps of 0.1 (written as 1 + x/10, so 2.0, 3.0, ... are exact integers), then 12 ... 63
DEFAULT_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + [float(a) for a in range(12, 64)])
MAX_NOISE_MULTIPLIER = 1e4  # the noise search gives up above this sigma


def _check_sample_rate(sample_rate: float) -> float:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, Real) or not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be a probability in (0, 1] (batch size / dataset size), "
                         f"got {sample_rate!r}")
    return float(sample_rate)


def _check_delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, Real) or not 0 < delta < 1:
        raise ValueError(f"delta must lie in the open interval (0, 1) (typically < 1/dataset size), got {delta!r}")
    return float(delta)


def _check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, Integral) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    return int(steps)


def _check_sigma(noise_multiplier: float) -> float:
    if (isinstance(noise_multiplier, bool) or not isinstance(noise_multiplier, Real)
            or math.isnan(noise_multiplier) or noise_multiplier < 0):
        raise ValueError(f"noise_multiplier must be a number >= 0 (noise std / clipping norm), "
                         f"got {noise_multiplier!r}")
    return float(noise_multiplier)


def _log_a_integer(q: float, sigma: float, alpha: int) -> float:
    """log A_alpha for integer alpha: a finite binomial sum, summed in log space."""
    i = np.arange(alpha + 1, dtype=np.float64)
    log_binom = special.gammaln(alpha + 1) - special.gammaln(i + 1) - special.gammaln(alpha - i + 1)
    terms = log_binom + i * math.log(q) + (alpha - i) * math.log1p(-q) + (i * i - i) / (2 * sigma**2)
    return float(special.logsumexp(terms))


def _log_a_fractional(q: float, sigma: float, alpha: float) -> float:
    """log A_alpha for fractional alpha: the two-sided series of Mironov et al. (2019), section 3.3.

    Term i of each half carries binom(alpha, i), whose sign alternates once i > alpha; positive and negative
    terms are summed separately in log space and subtracted once. Terms are computed in blocks of 64 and the
    series stops at the first i where both halves' terms fall below exp(-30) (A_alpha >= 1, so the rest is
    far below float64 resolution of the result)."""
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    positive: list[np.ndarray] = []
    negative: list[np.ndarray] = []
    start, block = 0, 64
    while True:
        i = np.arange(start, start + block, dtype=np.float64)
        j = alpha - i
        coef = special.binom(alpha, i)
        log_coef = np.log(np.abs(coef))
        log_half = math.log(0.5) + math.log(2.0)  # 0.5 * erfc(x) = Phi(-x sqrt(2))
        log_s0 = (log_coef + i * math.log(q) + j * math.log1p(-q) + (i * i - i) / (2 * sigma**2)
                  + log_half + special.log_ndtr(-(i - z0) / sigma))
        log_s1 = (log_coef + j * math.log(q) + i * math.log1p(-q) + (j * j - j) / (2 * sigma**2)
                  + log_half + special.log_ndtr(-(z0 - j) / sigma))
        small = np.flatnonzero(np.maximum(log_s0, log_s1) < -30)
        stop = int(small[0]) + 1 if small.size else block
        keep = slice(0, stop)
        pos = coef[keep] > 0
        positive += [log_s0[keep][pos], log_s1[keep][pos]]
        negative += [log_s0[keep][~pos], log_s1[keep][~pos]]
        if small.size:
            break
        start += block
        if start > 1_000_000 or not (np.isfinite(log_s0).any() or np.isfinite(log_s1).any()):
            raise ValueError(f"the RDP series at order {alpha} did not converge (sigma={sigma}, q={q})")
    log_pos = float(special.logsumexp(np.concatenate(positive)))
    neg = np.concatenate(negative)
    if neg.size == 0:
        return log_pos
    log_neg = float(special.logsumexp(neg))
    return log_pos + math.log(-math.expm1(log_neg - log_pos))


def rdp_sampled_gaussian(noise_multiplier: float, sample_rate: float,
                         orders: Sequence[float] = DEFAULT_ORDERS) -> np.ndarray:
    """RDP(alpha) of ONE step of the sampled Gaussian mechanism at each order: (len(orders),) float64."""
    sigma, q = _check_sigma(noise_multiplier), _check_sample_rate(sample_rate)
    out = np.empty(len(orders), dtype=np.float64)
    for k, alpha in enumerate(orders):
        if not 1 < alpha < math.inf:  # NaN too; an infinite order never ends the fractional series
            raise ValueError(f"orders must all be finite and > 1, got {alpha}")
        if sigma**2 == 0:  # sigma = 0, or so small (< 1e-162) that sigma^2 underflows: no noise
            out[k] = math.inf
        elif math.isinf(sigma):  # infinite noise: the output says nothing about any example
            out[k] = 0.0
        elif q == 1.0:  # no subsampling: the Gaussian mechanism's alpha / (2 sigma^2)
            out[k] = alpha / (2 * sigma**2)
        elif math.isinf(alpha * (alpha - 1) / (2 * sigma**2)):
            # sigma < ~1e-153: the series' leading term q^alpha exp(alpha (alpha-1) / (2 sigma^2)) overflows
            # float64 (its terms turned NaN: "did not converge"; Opacus hangs). RDP is then about
            # alpha / (2 sigma^2) > 1e300 for any q: report it as unbounded.
            out[k] = math.inf
        elif float(alpha).is_integer():
            out[k] = _log_a_integer(q, sigma, int(alpha)) / (alpha - 1)
        else:
            out[k] = _log_a_fractional(q, sigma, float(alpha)) / (alpha - 1)
    return out


def rdp_to_epsilon(rdp: np.ndarray, delta: float, orders: Sequence[float] = DEFAULT_ORDERS) -> tuple[float, float]:
    """(epsilon, best order) from accumulated RDP values, Balle et al. (2020) Theorem 21 (module docstring)."""
    delta = _check_delta(delta)
    a = np.asarray(orders, dtype=np.float64)
    rdp = np.asarray(rdp, dtype=np.float64)
    if rdp.shape != a.shape:
        raise ValueError(f"rdp must have one value per order, got shape {rdp.shape} for {a.shape[0]} orders")
    with np.errstate(invalid="ignore"):
        eps = rdp + np.log((a - 1) / a) - (math.log(delta) + np.log(a)) / (a - 1)
    if np.isnan(eps).all():
        return math.inf, math.nan
    best = int(np.nanargmin(eps))
    # at a large delta the bound can fall below 0 (Opacus reports it so); epsilon >= 0 by definition
    return max(float(eps[best]), 0.0), float(a[best])


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon spent by ``steps`` DP-SGD steps with noise ``sigma = noise_multiplier`` at Poisson rate ``q``.

    >>> round(epsilon(1.0, 0.01, 1000, 1e-5), 3)   # the classic CIFAR-scale setting (Opacus: 2.101 too)
    2.101
    """
    delta = _check_delta(delta)
    steps = _check_steps(steps)
    rdp = rdp_sampled_gaussian(noise_multiplier, sample_rate)
    if steps == 0:
        return 0.0
    return rdp_to_epsilon(rdp * steps, delta)[0]


def epsilon_floor(delta: float, orders: Sequence[float] = DEFAULT_ORDERS) -> float:
    """The epsilon infinite noise still reports (RDP = 0): no target below it is reachable with these orders."""
    return rdp_to_epsilon(np.zeros(len(orders)), delta, orders)[0]


def noise_multiplier_for(target_epsilon: float, sample_rate: float, steps: int, delta: float, *,
                         rtol: float = 1e-6) -> float:
    """The smallest noise multiplier whose :func:`epsilon` is at most ``target_epsilon`` (bisection).

    Epsilon falls monotonically as sigma grows, so sigma is bracketed by doubling and then bisected until
    the bracket is ``rtol`` relative wide; the upper end (the private side) is returned, so
    ``epsilon(noise_multiplier_for(e, ...), ...) <= e`` always. ``target_epsilon=inf`` returns 0.0 (no noise).
    """
    if (isinstance(target_epsilon, bool) or not isinstance(target_epsilon, Real)
            or math.isnan(target_epsilon) or target_epsilon <= 0):
        raise ValueError(f"target_epsilon must be a number > 0 (or inf for no privacy), got {target_epsilon!r}")
    q, delta, steps = _check_sample_rate(sample_rate), _check_delta(delta), _check_steps(steps)
    if isinstance(rtol, bool) or not isinstance(rtol, Real) or not 0 < rtol < 1:
        raise ValueError(f"rtol must be a number in (0, 1), got {rtol!r}")
    if math.isinf(target_epsilon) or steps == 0:
        return 0.0
    floor = epsilon_floor(delta)
    if target_epsilon <= floor:
        raise ValueError(f"target_epsilon={target_epsilon} is unreachable: even infinite noise gives epsilon >= "
                         f"{floor:.4f} at delta={delta} with RDP orders up to {DEFAULT_ORDERS[-1]:.0f}; "
                         "raise target_epsilon or delta")
    hi = 1.0
    while epsilon(hi, q, steps, delta) > target_epsilon:
        if hi >= MAX_NOISE_MULTIPLIER:
            raise ValueError(f"target_epsilon={target_epsilon} is unreachable: noise_multiplier > "
                             f"{MAX_NOISE_MULTIPLIER:g} would be needed for sample_rate={q}, steps={steps}, "
                             f"delta={delta}")
        hi = min(2 * hi, MAX_NOISE_MULTIPLIER)  # the last bracket tries the largest allowed value itself
    lo = 0.0
    while hi - lo > rtol * hi:
        mid = (lo + hi) / 2
        if epsilon(mid, q, steps, delta) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi


class RDPAccountant:
    """Accumulates RDP over training steps (possibly with changing sigma or q) and reports epsilon.

    ``history`` holds ``(noise_multiplier, sample_rate, steps)`` runs; consecutive equal steps are merged."""

    def __init__(self, orders: Sequence[float] = DEFAULT_ORDERS) -> None:
        self.orders = tuple(float(a) for a in orders)
        if not self.orders or not all(1 < a < math.inf for a in self.orders):
            raise ValueError(f"orders must be a non-empty sequence of finite RDP orders > 1, got {tuple(orders)!r}")
        self.history: list[tuple[float, float, int]] = []
        self._rdp_cache: dict[tuple[float, float], np.ndarray] = {}

    def step(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        key = (_check_sigma(noise_multiplier), _check_sample_rate(sample_rate))
        steps = _check_steps(steps)
        if self.history and self.history[-1][:2] == key:
            self.history[-1] = (*key, self.history[-1][2] + steps)
        else:
            self.history.append((*key, steps))

    @property
    def steps(self) -> int:
        return sum(s for _, _, s in self.history)

    def rdp(self) -> np.ndarray:
        total = np.zeros(len(self.orders))
        for sigma, q, steps in self.history:
            if (sigma, q) not in self._rdp_cache:
                self._rdp_cache[(sigma, q)] = rdp_sampled_gaussian(sigma, q, self.orders)
            total += self._rdp_cache[(sigma, q)] * steps
        return total

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (0.0 before the first step)."""
        delta = _check_delta(delta)
        if not self.history:
            return 0.0
        return rdp_to_epsilon(self.rdp(), delta, self.orders)[0]
