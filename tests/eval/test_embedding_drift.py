"""Embedding drift: MMD^2 against a written-out double loop, the permutation test's behaviour, cosine shift."""

import numpy as np
import pytest
import torch

from mlcore.eval import cosine_shift, mmd2, mmd_permutation_test


def _mmd2_loops(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    def k(a, b):
        return np.exp(-np.sum((a - b) ** 2) / (2 * sigma**2))

    n, m = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return sxx + syy - 2 * sxy


def test_mmd2_equals_loops_and_median_heuristic():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 3)), rng.normal(0.3, 1.0, size=(9, 3))
    assert mmd2(x, y, bandwidth=1.5) == pytest.approx(_mmd2_loops(x, y, 1.5), rel=1e-10)
    pooled = np.concatenate([x, y])
    d = np.sqrt(((pooled[:, None] - pooled[None]) ** 2).sum(-1))[np.triu_indices(21, 1)]
    res = mmd_permutation_test(x, y, n_permutations=0)
    assert res.bandwidth == pytest.approx(np.median(d))
    assert res.mmd2 == pytest.approx(_mmd2_loops(x, y, np.median(d)), rel=1e-10)


def test_permutation_test_detects_shift_and_is_seeded():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(80, 8, generator=g)
    same = torch.randn(80, 8, generator=g)
    shifted = torch.randn(80, 8, generator=g) + 0.6
    state = torch.random.get_rng_state()
    a = mmd_permutation_test(ref, shifted, n_permutations=200, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched
    assert a.p_value == pytest.approx(1 / 201)  # no permutation beats the observed shift
    b = mmd_permutation_test(ref, same, n_permutations=200, seed=1)
    assert b.p_value > 0.05 and b.mmd2 < a.mmd2
    assert mmd_permutation_test(ref, same, n_permutations=200, seed=1) == b  # same seed, same answer


def test_cosine_shift():
    x = np.array([[1.0, 0.0], [1.0, 0.2]])
    y = np.array([[0.0, 1.0], [0.2, 1.0]])
    a, b = x.mean(0), y.mean(0)
    expected = 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert cosine_shift(x, y) == pytest.approx(expected)
    assert cosine_shift(x, x) == pytest.approx(0.0, abs=1e-12)


def test_bad_input():
    with pytest.raises(ValueError, match="same dimension"):
        cosine_shift(np.ones((3, 4)), np.ones((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        mmd2(np.array([[np.nan, 1.0], [0.0, 1.0]]), np.ones((2, 2)))
    with pytest.raises(ValueError, match="at least 2 rows"):
        mmd_permutation_test(np.ones((1, 3)), np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        cosine_shift(np.ones(3), np.ones((2, 3)))
    with pytest.raises(ValueError, match="zero vector"):
        cosine_shift(np.zeros((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="n_permutations"):
        mmd_permutation_test(np.ones((3, 2)), np.ones((3, 2)), n_permutations=-1)


def test_median_bandwidth_past_quantiles_limit_equals_numpy_median():
    # 5,800 pooled rows give 16.8M pairwise distances, past torch.quantile's 2**24-element limit
    from mlcore.eval.embedding_drift import median_bandwidth

    g = torch.Generator().manual_seed(0)
    pooled = torch.randn(5800, 4, generator=g, dtype=torch.float64)
    d = torch.cdist(pooled, pooled)
    i, j = torch.triu_indices(5800, 5800, offset=1)
    assert median_bandwidth(pooled) == pytest.approx(float(np.median(d[i, j].numpy())), rel=1e-12)
    small = pooled[:5]  # 10 pairs: an even count takes the midpoint, as numpy does
    d = torch.cdist(small, small)
    i, j = torch.triu_indices(5, 5, offset=1)
    assert median_bandwidth(small) == pytest.approx(float(np.median(d[i, j].numpy())), rel=1e-12)


def test_mmd_names_bad_bandwidth_and_non_numeric_rows():
    x = np.random.default_rng(0).random((4, 2))
    with pytest.raises(ValueError, match="bandwidth must be a number"):
        mmd2(x, x, bandwidth="1")
    with pytest.raises(ValueError, match="reference must be numeric"):
        mmd2([["a"], ["b"]], x)


def test_cosine_shift_of_short_means_equals_scipy():
    # F.cosine_similarity clamps norms at 1e-8: two equal means of norm ~1e-9 gave a shift of 0.97 (scipy: 0)
    from scipy.spatial.distance import cosine

    rng = np.random.default_rng(2)
    for scale in (1e-12, 1e-9, 1.0, 1e6):
        x, y = rng.normal(size=(7, 5)) * scale, (rng.normal(size=(9, 5)) + 0.5) * scale
        assert cosine_shift(x, y) == pytest.approx(cosine(x.mean(0), y.mean(0)), abs=1e-12)
    tiny = np.full((4, 3), 1e-9)
    assert cosine_shift(tiny, tiny) == pytest.approx(0.0, abs=1e-12)


def _loop_mmd2(x, y, sigma):
    """The unbiased estimator written out in float64 (pairwise differences, no matrix-product shortcut)."""
    k = lambda a, b: np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * sigma**2))  # noqa: E731
    n, m = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    return ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * k(x, y).mean())


def test_mmd_far_from_the_origin_and_extreme_bandwidths():
    # 80 rows 1e6 from the origin, 1e-2 apart: cdist's matrix-product path cancelled (MMD^2 0.0169, exact 0.0285)
    rng = np.random.default_rng(0)
    x = 1e6 + rng.normal(size=(40, 8)) * 1e-2
    y = 1e6 + rng.normal(0.3, 1.0, size=(40, 8)) * 1e-2
    pooled = np.r_[x, y]
    d = np.sqrt(((pooled[:, None] - pooled[None]) ** 2).sum(-1))
    sigma = float(np.median(d[np.triu_indices(80, 1)]))
    result = mmd_permutation_test(x, y, n_permutations=0)
    assert result.bandwidth == pytest.approx(sigma, rel=1e-9)
    assert result.mmd2 == pytest.approx(_loop_mmd2(x, y, sigma), rel=1e-9)
    small = rng.normal(size=(5, 3))
    assert mmd2(small, small + 1, bandwidth=1e-300) == 0.0  # was NaN (sigma**2 underflowed to 0)
    assert mmd2(small, small + 1, bandwidth=1e300) == 0.0   # was OverflowError
    with pytest.raises(ValueError, match="bandwidth must be a finite number > 0"):
        mmd2(small, small + 1, bandwidth=float("inf"))     # was 0.0, p = 1: every kernel value 1
