"""The RDP accountant (Mironov et al. 2019 + Balle et al. 2020 conversion) against Opacus' RDPAccountant."""

import itertools
import math
import warnings

import pytest

from mlcore.training.dp import epsilon, epsilon_floor, noise_multiplier_for
from mlcore.training.dp_accountant import RDPAccountant

opacus_accountants = pytest.importorskip("opacus.accountants")

SIGMAS = (0.5, 1.3, 5.0)
RATES = (0.001, 0.01, 0.1)
STEPS = (1, 1000, 100_000)


def opacus_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    acc = opacus_accountants.RDPAccountant()
    acc.history = [(sigma, q, steps)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "optimal order is the largest alpha" at tiny epsilon
        return acc.get_epsilon(delta=delta)


def test_epsilon_matches_opacus_over_grid():
    worst = 0.0
    for sigma, q in itertools.product(SIGMAS, RATES):
        for steps in STEPS:
            ours, ref = epsilon(sigma, q, steps, 1e-5), opacus_epsilon(sigma, q, steps, 1e-5)
            worst = max(worst, abs(ours - ref) / ref)
    assert worst < 1e-6, f"worst relative error vs Opacus {worst:.2e}"


def test_epsilon_other_delta_and_full_batch():
    for sigma, q, steps, delta in ((1.0, 1.0, 10, 1e-3), (1.3, 0.05, 700, 1e-6), (0.7, 0.003, 3, 0.02)):
        ref = opacus_epsilon(sigma, q, steps, delta)
        assert abs(epsilon(sigma, q, steps, delta) - ref) <= 1e-6 * abs(ref)
    # at a large delta the conversion falls below 0, which Opacus reports as it is; epsilon >= 0 by definition
    assert opacus_epsilon(0.7, 0.003, 3, 0.1) < 0 and epsilon(0.7, 0.003, 3, 0.1) == 0.0


def test_accountant_composes_like_opacus():
    ours, ref = RDPAccountant(), opacus_accountants.RDPAccountant()
    for sigma, q, n in ((1.0, 0.01, 30), (2.0, 0.02, 10), (1.0, 0.01, 5)):
        for _ in range(n):
            ours.step(sigma, q)
            ref.step(noise_multiplier=sigma, sample_rate=q)
    assert ours.steps == 45
    assert abs(ours.epsilon(1e-5) - ref.get_epsilon(1e-5)) <= 1e-6 * ref.get_epsilon(1e-5)


def test_epsilon_monotone_and_edge_cases():
    assert epsilon(1.0, 0.01, 0, 1e-5) == 0.0
    assert epsilon(0.0, 0.01, 10, 1e-5) == math.inf
    values = [epsilon(s, 0.01, 1000, 1e-5) for s in (0.6, 0.8, 1.0, 2.0, 4.0)]
    assert values == sorted(values, reverse=True)


@pytest.mark.parametrize("target,q,steps", [(1.0, 0.01, 1000), (8.0, 0.1, 100), (0.5, 0.001, 10)])
def test_noise_search_inverts_epsilon(target, q, steps):
    sigma = noise_multiplier_for(target, q, steps, 1e-5)
    assert epsilon(sigma, q, steps, 1e-5) <= target
    assert epsilon(sigma * (1 - 1e-4), q, steps, 1e-5) > target  # the smallest such sigma, to 1e-4
    assert abs(epsilon(sigma, q, steps, 1e-5) - target) < 1e-3 * target


def test_noise_search_infinite_target_is_no_noise():
    assert noise_multiplier_for(math.inf, 0.01, 100, 1e-5) == 0.0


def test_unreachable_target_names_the_floor():
    floor = epsilon_floor(1e-5)
    assert 0.05 < floor < 0.2
    with pytest.raises(ValueError, match="unreachable"):
        noise_multiplier_for(floor / 2, 0.01, 100, 1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(delta=0.0), "delta"), (dict(delta=1.0), "delta"), (dict(delta=-1e-5), "delta"),
    (dict(sample_rate=0.0), "sample_rate"), (dict(sample_rate=1.5), "sample_rate"),
    (dict(noise_multiplier=-1.0), "noise_multiplier"), (dict(steps=-3), "steps"), (dict(steps=2.5), "steps"),
])
def test_bad_input(kwargs, match):
    args = dict(noise_multiplier=1.0, sample_rate=0.01, steps=10, delta=1e-5) | kwargs
    with pytest.raises(ValueError, match=match):
        epsilon(**args)


@pytest.mark.parametrize("kwargs,match", [(dict(delta=2.0), "delta"), (dict(sample_rate=0.0), "sample_rate"),
                                          (dict(target_epsilon=0.0), "target_epsilon")])
def test_noise_search_bad_input(kwargs, match):
    args = dict(target_epsilon=1.0, sample_rate=0.01, steps=10, delta=1e-5) | kwargs
    with pytest.raises(ValueError, match=match):
        noise_multiplier_for(**args)


def test_infinite_noise_and_degenerate_search_arguments():
    """Infinite noise spends only the conversion's floor (it hung in the series before); a target needing a
    multiplier between the last doubling and the cap is found; rtol <= 0 is refused (it never stopped)."""
    assert epsilon(math.inf, 0.01, 10, 1e-5) == epsilon(math.inf, 1.0, 10, 1e-5) == epsilon_floor(1e-5)
    sigma = noise_multiplier_for(5.6475, 1.0, 10**8, 1e-5)
    assert 8192 < sigma < 10_000 and epsilon(sigma, 1.0, 10**8, 1e-5) <= 5.6475
    with pytest.raises(ValueError, match="rtol"):
        noise_multiplier_for(1.0, 0.01, 100, 1e-5, rtol=0)


def test_numpy_scalars_are_accepted_as_numbers():
    np = pytest.importorskip("numpy")
    expected = epsilon(1.0, 0.01, 10, 1e-5)
    assert epsilon(np.float64(1.0), np.float64(0.01), np.int64(10), np.float64(1e-5)) == expected
    assert epsilon(np.float32(1.0), np.float32(0.5), 10, 1e-5) == pytest.approx(epsilon(1.0, 0.5, 10, 1e-5))
    assert noise_multiplier_for(np.float32(2.0), 0.01, 100, 1e-5) > 0


def test_vanishing_noise_spends_infinite_epsilon():
    """sigma below ~1e-153 overflows the series' exp terms: it raised "did not converge" (Opacus hangs), and at
    q = 1 a ZeroDivisionError once sigma^2 underflows to 0. Such noise is no noise: epsilon is inf. Just above
    the overflow the value still equals Opacus'."""
    for sigma in (1e-155, 1e-200, 5e-324):
        for q in (1e-6, 0.01, 0.5, 1.0):
            assert epsilon(sigma, q, 10, 1e-5) == math.inf
    ref = opacus_epsilon(1e-150, 0.01, 10, 1e-5)
    assert 1e300 < ref < math.inf and epsilon(1e-150, 0.01, 10, 1e-5) == pytest.approx(ref, rel=1e-9)
    for orders in ((2.0, math.inf), (2.0, math.nan)):
        with pytest.raises(ValueError, match="finite"):
            RDPAccountant(orders=orders)
