"""Exposure of planted canaries: how much a model memorised a secret (Carlini et al. 2019, "The Secret
Sharer: Evaluating and Testing Unintended Memorization in Neural Networks", USENIX Security).

Plant a canary s[r] = "my card number is <r>" with r drawn from a randomness space R. After training, rank
every candidate r' in R by the model's log-perplexity of s[r'] (lower = more likely; rank 1 = the most
likely). Exposure is

    exposure(r) = log2 |R| - log2 rank(r)          (0 <= exposure <= log2 |R|)

A model that never saw the canary ranks it in the middle (exposure ~ 1 bit); full memorisation puts it
first (exposure = log2 |R|). Candidates scored exactly like the canary share its place: the rank is the
mid-rank 1 + #{lower} + #{tied}/2 (ties not counting the canary itself), so a model that cannot tell the
candidates apart (constant scores) gives ~1 bit, not log2 |R| as counting only strictly lower ones would.
NaN scores have no rank and are refused (ValueError). Three ways to get the rank:

- **exact**: score all of R (feasible for |R| up to ~10^5);
- **sampled**: score n random candidates; rank ~ 1 + (|R| - 1) * (#{sample < canary} + #{sample = canary}/2)
  / n (resolves exposure up to about log2 n bits);
- **skew-normal extrapolation** (the paper's section 4.3): the candidates' log-perplexities are close to a
  skew-normal distribution; fit it to the sample and use exposure = -log2 CDF(canary's log-perplexity),
  which reaches far beyond log2 n.

Everything is written over a scoring function ``log_perplexity(texts) -> Tensor (N,)`` so any model fits.
The skew-normal CDF is computed here (pdf 2 phi(z) Phi(a z) integrated in log space); its fit uses scipy's
maximum likelihood when scipy is importable and the method of moments otherwise.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

LogPerplexity = Callable[[list[str]], torch.Tensor]


@dataclass(frozen=True)
class SecretSpace:
    """The randomness space R: `length` symbols from `alphabet`, rendered into `template` via `format`."""

    template: str = "my card number is {}"
    alphabet: str = "0123456789"
    length: int = 4
    format: Callable[[str], str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.template, str) or not isinstance(self.alphabet, str):
            raise TypeError("template and alphabet must be str")
        if not isinstance(self.length, int) or isinstance(self.length, bool):
            raise TypeError(f"length must be an int, got {self.length!r}")
        try:  # exactly one field and no others, so render() cannot fail (or drop the secret) later
            ok = self.template.format("\x00").count("\x00") == 1
        except (IndexError, KeyError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise ValueError(f"template must contain '{{}}' exactly once where the secret goes (no other fields), "
                             f"got {self.template!r}")
        if self.length < 1 or len(set(self.alphabet)) != len(self.alphabet) or not self.alphabet:
            raise ValueError(f"need length >= 1 and a non-empty alphabet without repeats, got length={self.length}")

    @property
    def size(self) -> int:
        return len(self.alphabet) ** self.length

    def render(self, secret: str) -> str:
        return self.template.format(self.format(secret) if self.format else secret)

    def all(self) -> Iterator[str]:
        return ("".join(p) for p in itertools.product(self.alphabet, repeat=self.length))

    def sample(self, n: int, rng: random.Random) -> list[str]:
        return ["".join(rng.choice(self.alphabet) for _ in range(self.length)) for _ in range(n)]


def exposure_from_rank(rank: float, space_size: int) -> float:
    """log2 |R| - log2 rank."""
    if not 1 <= rank <= space_size:
        raise ValueError(f"rank must be in [1, {space_size}], got {rank}")
    return math.log2(space_size) - math.log2(rank)


def _check_no_nan(canary_lp: float, lps: torch.Tensor) -> None:
    if math.isnan(canary_lp) or bool(torch.isnan(lps).any()):
        raise ValueError("log-perplexities must not be NaN (a NaN score has no rank); check the model's output")


def _below(canary_lp: float, lps: torch.Tensor) -> float:
    """#{lower} + #{tied}/2: candidates scored the same as the canary share its place (mid-rank)."""
    _check_no_nan(canary_lp, lps)
    return float((lps < canary_lp).sum()) + float((lps == canary_lp).sum()) / 2


def rank_exact(canary_lp: float, candidate_lps: torch.Tensor) -> float:
    """Mid-rank of the canary among the other candidates: 1 + #{lower log-perplexity} + #{equal}/2."""
    return 1 + _below(canary_lp, candidate_lps)


def exposure_sampled(canary_lp: float, sample_lps: torch.Tensor, space_size: int) -> float:
    """Exposure from a uniform sample of candidates, by mid-rank (log2|R| when none beats or ties the canary)."""
    if sample_lps.numel() == 0:
        raise ValueError("need at least one sampled candidate")
    frac = _below(canary_lp, sample_lps) / sample_lps.numel()
    return exposure_from_rank(1 + frac * (space_size - 1), space_size)


# --- skew-normal: pdf(x) = 2/w * phi(z) * Phi(a z), z = (x - loc) / w -----------------------------------

def skewnorm_logcdf(x: float, a: float, loc: float, scale: float, *, grid: int = 4001) -> float:
    """log CDF of the skew-normal at `x`, by integrating the log-density on a grid (log-sum-exp)."""
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if math.isinf(x):  # a candidate the model gives probability 0 (+inf) or 1 (-inf): scipy's 0 and -inf
        return 0.0 if x > 0 else -math.inf
    z = (x - loc) / scale
    lo = min(z, -12.0) - 1.0 if a >= 0 else min(z, -40.0) - 1.0
    lo = min(lo, z - 12.0) if z < -12 else lo
    ts = torch.linspace(lo, z, grid, dtype=torch.float64)
    dt = (z - lo) / (grid - 1)
    logpdf = math.log(2.0) - 0.5 * ts**2 - 0.5 * math.log(2 * math.pi) + torch.special.log_ndtr(a * ts)
    w = torch.full_like(ts, math.log(dt))
    w[0] = w[-1] = math.log(dt / 2)  # trapezoid end weights
    return float(torch.logsumexp(logpdf + w, 0).clamp(max=0.0))


def fit_skewnorm_moments(samples: torch.Tensor) -> tuple[float, float, float]:
    """(a, loc, scale) matching mean, variance and skewness (skewness clipped to the attainable 0.995)."""
    x = samples.double()
    m, s = float(x.mean()), float(x.std(unbiased=True))
    g = float(((x - m) ** 3).mean()) / max(float(x.var(unbiased=False)) ** 1.5, 1e-300)
    g = max(-0.99, min(0.99, g))
    c = abs(g) ** (2 / 3)
    delta = math.copysign(math.sqrt(math.pi / 2 * c / (c + ((4 - math.pi) / 2) ** (2 / 3))), g)
    delta = max(-0.999, min(0.999, delta))
    a = delta / math.sqrt(1 - delta**2)
    scale = s / math.sqrt(1 - 2 * delta**2 / math.pi)
    loc = m - scale * delta * math.sqrt(2 / math.pi)
    return a, loc, scale


def fit_skewnorm(samples: torch.Tensor, *, use_scipy: bool = True) -> tuple[float, float, float]:
    """(a, loc, scale): scipy.stats.skewnorm.fit (maximum likelihood) if available, else moments."""
    if samples.numel() < 10:
        raise ValueError(f"need at least 10 samples to fit a skew-normal, got {samples.numel()}")
    if not bool(torch.isfinite(samples).all()):  # scipy refuses deep inside its fit, the moments go NaN
        bad = int((~torch.isfinite(samples)).sum())
        raise ValueError(f"sample log-perplexities must be finite to fit a skew-normal, got {bad} of "
                         f"{samples.numel()} infinite or NaN; rank them with method='sampled' or 'exact' instead")
    if use_scipy:
        try:
            from scipy.stats import skewnorm
        except ImportError:
            pass
        else:
            a0, loc0, scale0 = fit_skewnorm_moments(samples)
            a, loc, scale = skewnorm.fit(samples.double().numpy(), a0, loc=loc0, scale=scale0)
            return float(a), float(loc), float(scale)
    return fit_skewnorm_moments(samples)


def exposure_skewnorm(canary_lp: float, sample_lps: torch.Tensor, space_size: int | None = None,
                      *, use_scipy: bool = True) -> float:
    """-log2 CDF(canary) under a skew-normal fitted to the sample (capped at log2|R| when given)."""
    a, loc, scale = fit_skewnorm(sample_lps, use_scipy=use_scipy)
    exposure = -skewnorm_logcdf(canary_lp, a, loc, scale) / math.log(2)
    return min(exposure, math.log2(space_size)) if space_size else exposure


@dataclass(frozen=True)
class Exposure:
    """One canary's exposure (bits), how it was estimated, and its log-perplexity."""

    exposure: float
    method: str
    log_perplexity: float
    rank: float | None = None


def _score(log_perplexity: LogPerplexity, texts: list[str], batch_size: int) -> torch.Tensor:
    out = []
    for i in range(0, len(texts), batch_size):
        scores = log_perplexity(texts[i : i + batch_size])
        if not isinstance(scores, torch.Tensor):
            raise ValueError(f"log_perplexity must return a torch.Tensor of one score per text, got "
                             f"{type(scores).__name__}")
        out.append(scores.detach().double().cpu().reshape(-1))
    scores = torch.cat(out) if out else torch.empty(0, dtype=torch.float64)
    if scores.numel() != len(texts):
        raise ValueError(f"log_perplexity returned {scores.numel()} scores for {len(texts)} texts; expected one each")
    if bool(torch.isnan(scores).any()):
        raise ValueError("log_perplexity returned NaN scores; a NaN has no rank (check the model's output)")
    return scores


def canary_exposure(
    log_perplexity: LogPerplexity,
    canaries: Sequence[str],
    space: SecretSpace,
    *,
    method: str = "auto",
    n_samples: int = 2000,
    exact_limit: int = 100_000,
    batch_size: int = 512,
    seed: int = 0,
) -> list[Exposure]:
    """Exposure of each canary secret (an element of `space`) under a model's `log_perplexity`.

    method: "exact" (all of R), "sampled", "skewnorm", or "auto" (exact when |R| <= `exact_limit`, else
    skew-normal).

    `log_perplexity(texts: list[str])` must return a ``torch.Tensor`` holding one score per text (any shape with
    ``len(texts)`` elements; it is flattened), called on batches of at most `batch_size` texts. `canaries` are
    the secrets themselves (``space.length`` symbols of ``space.alphabet``), not the rendered sentences.
    """
    if isinstance(canaries, str | bytes):
        raise TypeError("canaries must be a list of secrets, got a single str; wrap it: canaries=[secret]")
    if not isinstance(canaries, Sequence) or not all(isinstance(c, str) for c in canaries):
        raise TypeError(f"canaries must be a list of str secrets, got {canaries!r}")
    if not isinstance(space, SecretSpace):
        raise TypeError(f"space must be a SecretSpace, got {type(space).__name__}")
    for name, value in (("n_samples", n_samples), ("batch_size", batch_size), ("exact_limit", exact_limit)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if method not in ("auto", "exact", "sampled", "skewnorm"):
        raise ValueError(f"method must be 'auto', 'exact', 'sampled' or 'skewnorm', got {method!r}")
    for c in canaries:
        if len(c) != space.length or any(ch not in space.alphabet for ch in c):
            raise ValueError(f"each canary must be {space.length} symbols of the space's alphabet")
    if method == "auto":
        method = "exact" if space.size <= exact_limit else "skewnorm"
    if method == "exact" and space.size > exact_limit:
        raise ValueError(f"exact ranking needs |R| <= exact_limit={exact_limit}, got |R|={space.size}")
    canary_lps = _score(log_perplexity, [space.render(c) for c in canaries], batch_size)
    if method == "exact":
        secrets = list(space.all())
        lps = _score(log_perplexity, [space.render(s) for s in secrets], batch_size)
        index = {s: i for i, s in enumerate(secrets)}
        results = []
        for c, lp in zip(canaries, canary_lps.tolist()):
            others = torch.cat([lps[: index[c]], lps[index[c] + 1 :]])
            rank = rank_exact(lp, others)
            results.append(Exposure(exposure_from_rank(rank, space.size), "exact", lp, rank))
        return results
    drawn = space.sample(n_samples, random.Random(seed))
    sample = _score(log_perplexity, [space.render(s) for s in drawn], batch_size)
    if method == "sampled":
        # the canary drawn into its own sample would tie with itself: rank it among the other candidates only
        others = [sample[torch.tensor([s != c for s in drawn], dtype=torch.bool)] for c in canaries]
        return [Exposure(exposure_sampled(lp, rest, space.size), "sampled", lp)
                for lp, rest in zip(canary_lps.tolist(), others)]
    return [Exposure(exposure_skewnorm(lp, sample, space.size), "skewnorm", lp) for lp in canary_lps.tolist()]
