"""Exposure math against brute force and scipy; the audit runs end to end on a tiny model."""

import math
import random

import pytest
import torch

from mlcore.privacy.audit.canary_audit import card_secret_format, run_audit
from mlcore.privacy.audit.memorization import (
    SecretSpace,
    canary_exposure,
    exposure_from_rank,
    exposure_sampled,
    fit_skewnorm,
    fit_skewnorm_moments,
    skewnorm_logcdf,
)
from mlcore.privacy.recognizers.checksums import luhn_valid


@pytest.mark.parametrize("a,loc,scale,x", [(3, 0, 1, -1.0), (-2, 5, 2, 0.0), (0, 0, 1, -6), (4, 1, 0.5, 0.2), (-5, 0, 1, -8)])
def test_skewnorm_logcdf_matches_scipy(a, loc, scale, x):
    skewnorm = pytest.importorskip("scipy.stats").skewnorm
    assert skewnorm_logcdf(x, a, loc, scale) == pytest.approx(skewnorm.logcdf(x, a, loc, scale), rel=1e-3, abs=1e-4)


def test_moment_fit_recovers_parameters():
    skewnorm = pytest.importorskip("scipy.stats").skewnorm
    samples = torch.tensor(skewnorm.rvs(4, loc=2, scale=3, size=20000, random_state=0))
    a, loc, scale = fit_skewnorm_moments(samples)
    assert loc == pytest.approx(2, abs=0.15) and scale == pytest.approx(3, rel=0.05) and a > 2.5
    assert fit_skewnorm(samples)[2] == pytest.approx(3, rel=0.05)


def _scorer(space, canary, strength):
    """A synthetic model: random scores, the canary made `strength` nats more likely."""
    table = {s: random.Random(s).gauss(50.0, 3.0) for s in space.all()}
    table[canary] -= strength

    def log_perplexity(texts):
        inverse = {space.render(s): s for s in table}
        return torch.tensor([table[inverse[t]] for t in texts])

    return log_perplexity, table


def test_exact_exposure_equals_brute_force_rank_and_estimators_agree():
    space = SecretSpace("pin {}", "0123456789", 3)
    for strength in (0.0, 4.0, 30.0):
        lp, table = _scorer(space, "123", strength)
        rank = 1 + sum(v < table["123"] for k, v in table.items() if k != "123")
        [exact] = canary_exposure(lp, ["123"], space, method="exact")
        assert exact.rank == rank and exact.exposure == pytest.approx(math.log2(1000) - math.log2(rank))
        [sampled] = canary_exposure(lp, ["123"], space, method="sampled", n_samples=600)
        [fitted] = canary_exposure(lp, ["123"], space, method="skewnorm", n_samples=600)
        assert sampled.exposure == pytest.approx(exact.exposure, abs=1.0)
        assert fitted.exposure == pytest.approx(exact.exposure, abs=1.5)
    assert exposure_from_rank(1, 1000) == pytest.approx(math.log2(1000))
    assert exposure_sampled(0.0, torch.ones(100), 2**20) == pytest.approx(20)


def test_validation():
    with pytest.raises(ValueError, match="template"):
        SecretSpace("no slot")
    space = SecretSpace("pin {}", "0123456789", 3)
    with pytest.raises(ValueError, match="3 symbols"):
        canary_exposure(lambda t: torch.zeros(len(t)), ["12"], space)
    with pytest.raises(ValueError, match="method"):
        canary_exposure(lambda t: torch.zeros(len(t)), ["123"], space, method="bogus")
    with pytest.raises(ValueError, match="one each"):
        canary_exposure(lambda t: torch.zeros(1), ["123", "456"], space)
    assert luhn_valid(card_secret_format("123").replace(" ", ""))


def test_tiny_audit_runs_with_mlcore_model_and_loop():
    torch.set_num_threads(2)
    r = run_audit((0, 8), free_digits=2, n_lines=40, steps=25, seq_len=48, d_model=32)
    assert r.space_size == 100 and r.method == "exact"
    assert all(0 <= e <= math.log2(100) for e in r.exposure_raw + r.exposure_masked)
    assert set(r.final_loss) == {"raw", "masked"}
