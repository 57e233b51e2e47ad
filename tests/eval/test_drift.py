"""PSI, KL and JS divergence against scipy and closed forms on known distributions."""

import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy

from mlcore.eval import histograms, js_divergence, kl_divergence, psi

P = np.array([0.1, 0.4, 0.3, 0.2])
Q = np.array([0.25, 0.25, 0.25, 0.25])


@pytest.mark.parametrize("base", [None, 2, 10])
def test_kl_and_js_equal_scipy(base):
    assert kl_divergence(P, Q, base=base) == pytest.approx(entropy(P, Q, base=base), rel=1e-12)
    assert kl_divergence(Q, P, base=base) == pytest.approx(entropy(Q, P, base=base), rel=1e-12)
    assert js_divergence(P, Q, base=base) == pytest.approx(jensenshannon(P, Q, base=base) ** 2, rel=1e-10)


def test_closed_forms():
    # counts are normalised; KL of identical distributions is 0; disjoint supports: KL inf, JS = ln 2 (1 bit)
    assert kl_divergence([2, 8, 6, 4], P * 7) == pytest.approx(0.0, abs=1e-15)
    assert kl_divergence([1, 0], [0, 1]) == math.inf
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(math.log(2))
    assert js_divergence([1, 0], [0, 1], base=2) == pytest.approx(1.0)
    # Bernoulli: KL(0.5 || 0.25) = 0.5 ln(2) + 0.5 ln(2/3)
    assert kl_divergence([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3))


def test_psi_categorical_formula_and_symmetrised_kl():
    ref = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    cur = ["a"] * 20 + ["b"] * 30 + ["c"] * 50
    r, c = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.3, 0.5])
    expected = float(((c - r) * np.log(c / r)).sum())
    assert psi(ref, cur, categorical=True) == pytest.approx(expected)
    assert psi(ref, cur, categorical=True) == pytest.approx(entropy(c, r) + entropy(r, c))
    # a category absent from the reference: its share is floored at eps
    got = psi(["a"] * 10, ["a"] * 5 + ["z"] * 5, categorical=True, eps=1e-3)
    assert got == pytest.approx((0.5 - 1) * math.log(0.5) + (0.5 - 1e-3) * math.log(0.5 / 1e-3))


def test_psi_quantile_bins():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=5000)
    r, _, labels = histograms(ref, ref, bins=10)
    assert len(labels) == 10 and np.allclose(r, 0.1, atol=1e-3)  # quantile bins: ~equal reference mass
    assert psi(ref, rng.normal(size=5000)) < 0.02  # same distribution: stable
    shifted = rng.normal(0.5, 1.0, size=5000)
    r, c, _ = histograms(ref, shifted, bins=10)
    assert psi(ref, shifted) == pytest.approx(float(((c - r) * np.log(c / r)).sum()))
    assert psi(ref, shifted) > 0.2
    # hand-made: reference 1..10 -> quantile inner edges 1.9, 2.8, ..., 9.1 in 10 bins, one value each;
    # current all at 10 -> last bin 1.0, others eps
    got = psi(np.arange(1, 11), np.full(4, 10.0), bins=10, eps=1e-4)
    expected = 9 * (1e-4 - 0.1) * math.log(1e-4 / 0.1) + (1 - 0.1) * math.log(1 / 0.1)
    assert got == pytest.approx(expected)


def test_bad_input():
    with pytest.raises(ValueError, match="at least"):
        psi([], [1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        psi([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least 30"):
        psi(np.arange(100.0), np.arange(10.0), min_samples=30)
    with pytest.raises(ValueError, match="same support"):
        kl_divergence([0.5, 0.5], [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="non-negative"):
        js_divergence([-0.1, 1.1], [0.5, 0.5])
    with pytest.raises(ValueError, match="positive sum"):
        kl_divergence([0.0, 0.0], [0.5, 0.5])
    with pytest.raises(ValueError, match="None / NaN"):
        psi(["a", None], ["a"], categorical=True)
    with pytest.raises(ValueError, match="eps"):
        psi([1.0, 2.0], [1.0, 2.0], eps=0)


def test_psi_names_a_string_sample_unhashable_labels_and_bad_eps():
    with pytest.raises(ValueError, match="reference must be a sequence of category labels, got one str"):
        psi("abc", ["a", "b"], categorical=True)
    with pytest.raises(ValueError, match="current holds an unhashable category label"):
        psi(["a", "b"], [["a"], "b"], categorical=True)
    with pytest.raises(ValueError, match="eps must be a number"):
        psi([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], eps="x")


def test_a_non_numeric_base_is_named():
    # base="2" was a TypeError "'>' not supported between instances of 'str' and 'int'"
    for base in ("2", True, float("nan"), 1):
        with pytest.raises(ValueError, match="base must be a positive number != 1"):
            kl_divergence([1, 2], [2, 1], base=base)
        with pytest.raises(ValueError, match="base must be a positive number != 1"):
            js_divergence([1, 2], [2, 1], base=base)


def test_float32_nan_categories_are_refused():
    # float32 NaNs passed the NaN check and each became its own category (NaN != NaN): PSI 6.04, silently
    ref = np.array([1, 2, np.nan, np.nan], dtype=np.float32)
    cur = np.array([1, 2, 2, np.nan], dtype=np.float32)
    for r, c in ((ref, cur), (list(ref), list(cur))):
        with pytest.raises(ValueError, match="None / NaN categories"):
            psi(r, c, categorical=True)
    with pytest.raises(ValueError, match="min_samples must be an int >= 0"):
        psi([1.0, 2.0], [1.0, 2.0], min_samples="2")  # was TypeError: int < str
