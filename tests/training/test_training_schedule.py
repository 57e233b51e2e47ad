"""Warm-up + cosine schedule against transformers' own schedulers (the ones HF Trainer uses)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import get_cosine_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup

from mlcore.training import cosine_with_warmup


def _hf_factors(warmup: int, total: int, min_lr_ratio: float) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    if min_lr_ratio == 0.0:
        sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=warmup, num_training_steps=total)
    else:
        sched = get_cosine_with_min_lr_schedule_with_warmup(opt, num_warmup_steps=warmup, num_training_steps=total,
                                                            min_lr_rate=min_lr_ratio)
    factors = []
    for _ in range(total + 1):
        factors.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return factors


@pytest.mark.parametrize("warmup,total,min_lr", [(10, 100, 0.0), (0, 50, 0.0), (7, 30, 0.1), (30, 30, 0.0)])
def test_schedule_matches_transformers(warmup, total, min_lr):
    hf = _hf_factors(warmup, total, min_lr)
    ours = [cosine_with_warmup(s, warmup_steps=warmup, total_steps=total, min_lr_ratio=min_lr)
            for s in range(total + 1)]
    assert ours == pytest.approx(hf, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(warmup=st.integers(0, 40), extra=st.integers(1, 200), min_lr=st.sampled_from([0.0, 0.05, 0.5]))
def test_schedule_matches_transformers_property(warmup, extra, min_lr):
    total = warmup + extra
    hf = _hf_factors(warmup, total, min_lr)
    for s in {0, warmup // 2, warmup, warmup + extra // 2, total}:
        assert cosine_with_warmup(s, warmup_steps=warmup, total_steps=total, min_lr_ratio=min_lr) == \
            pytest.approx(hf[s], abs=1e-12)


def test_schedule_known_points():
    # peak right after warm-up, half way down the cosine at the midpoint, the floor at the end
    assert cosine_with_warmup(5, warmup_steps=10, total_steps=110) == pytest.approx(0.5)
    assert cosine_with_warmup(10, warmup_steps=10, total_steps=110) == pytest.approx(1.0)
    assert cosine_with_warmup(60, warmup_steps=10, total_steps=110) == pytest.approx(0.5)
    assert cosine_with_warmup(110, warmup_steps=10, total_steps=110, min_lr_ratio=0.1) == pytest.approx(0.1)


@pytest.mark.parametrize("kwargs", [dict(step=-1), dict(total_steps=0), dict(min_lr_ratio=1.5),
                                    dict(warmup_steps=-2)])
def test_schedule_bad_input(kwargs):
    args = dict(step=0, warmup_steps=2, total_steps=10, min_lr_ratio=0.0) | kwargs
    step = args.pop("step")
    with pytest.raises(ValueError):
        cosine_with_warmup(step, **args)
