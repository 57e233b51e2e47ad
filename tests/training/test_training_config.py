"""TrainConfig refuses wrongly typed and inconsistent values with a ValueError naming the field."""

from __future__ import annotations

import pytest
import torch

from mlcore.training import TrainConfig
from mlcore.training.config import DEFAULT_WARMUP_STEPS


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"lr": "3e-4"}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"lr": True}, "lr"),
        ({"min_lr_ratio": "0.1"}, "min_lr_ratio"),
        ({"weight_decay": "0.1"}, "weight_decay"),
        ({"eps": "1e-8"}, "eps"),
        ({"eps": 0.0}, "eps"),
        ({"grad_clip": "1.0"}, "grad_clip"),
        ({"betas": ("0.9", 0.95)}, "betas"),
        ({"betas": (0.9,)}, "betas"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"max_steps": "100"}, "max_steps"),
        ({"warmup_steps": 2.5}, "warmup_steps"),
        ({"eval_batches": 0}, "eval_batches"),
        ({"eval_batch_size": "4"}, "eval_batch_size"),
    ],
)
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field} must be"):
        TrainConfig(**kwargs)


def test_string_lr_message_says_what_was_seen():
    with pytest.raises(ValueError, match=r"got '3e-4' \(str\)"):
        TrainConfig(lr="3e-4")


def test_warmup_longer_than_training_is_refused():
    with pytest.raises(ValueError, match=r"warmup_steps must be <= max_steps=5.*got 6"):
        TrainConfig(max_steps=5, warmup_steps=6)
    assert TrainConfig(max_steps=5, warmup_steps=5).warmup_steps == 5  # the edge is allowed


def test_default_warmup_fits_short_runs():
    """At most half the run warms up: a one-step run trains at its peak rate (a one-step warm-up trained at 0)."""
    assert TrainConfig().warmup_steps == DEFAULT_WARMUP_STEPS
    assert TrainConfig(max_steps=3).warmup_steps == 1
    assert TrainConfig(max_steps=1).warmup_steps == 0
    cfg = TrainConfig(max_steps=3)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(("field", "value"), [
    ("seed", "1"), ("seed", 1.5), ("dp", "false"), ("cpu", "no"), ("progress", 0), ("dp_poisson", "no"),
    ("lr", float("inf")), ("eps", float("inf")), ("weight_decay", float("inf")), ("out_dir", 5),
])
def test_types_and_infinities_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig.{field}"):
        TrainConfig(**{field: value})


def test_valid_config_builds_the_reference_optimizer():
    """The checked values are the ones torch.optim.AdamW accepts (the reference for betas and eps)."""
    cfg = TrainConfig(lr=1, betas=[0.5, 0.9], eps=1e-6)
    assert cfg.betas == (0.5, 0.9)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    assert opt.defaults["betas"] == (0.5, 0.9)
    with pytest.raises(ValueError):  # torch refuses beta2 = 1 too, as TrainConfig does
        torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], betas=(0.9, 1.0))


@pytest.mark.parametrize("seed", [2**64 + 5, -2**63 - 1])
def test_seed_torch_cannot_take_is_refused_by_name(seed):
    """torch.manual_seed raised 'Overflow when unpacking long long' (naming no field) when train() started."""
    with pytest.raises(ValueError, match="TrainConfig.seed"):
        TrainConfig(seed=seed)
    torch.Generator().manual_seed(2**63 - 1 + 1)  # the largest accepted seed plus an epoch still fits torch
