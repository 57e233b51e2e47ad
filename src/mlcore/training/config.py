"""Every knob of the training loop, in one dataclass (as nanoGPT keeps them at the top of ``train.py``).

The defaults are the usual small-model recipe: AdamW (Loshchilov & Hutter, 2019) with ``betas=(0.9, 0.95)``
and weight decay 0.1 on matrices only, a linear warm-up followed by a cosine decay (Loshchilov & Hutter,
"SGDR", 2017), and gradient clipping at norm 1.0.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
DEFAULT_WARMUP_STEPS = 10


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_real(name: str, value: Any, expected: str) -> float:
    """``value`` as a float, or a ``ValueError`` naming ``TrainConfig.<name>`` when it is not a real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"TrainConfig.{name} must be {expected}, got {value!r} ({type(value).__name__})")
    return float(value)


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`mlcore.training.train`.

    One optimizer step consumes ``batch_size * grad_accum_steps`` sequences: ``grad_accum_steps`` micro-batches
    of ``batch_size`` each, whose gradients add up before the step. ``max_steps`` counts optimizer steps.

    ``mixed_precision="auto"`` picks bf16 on a CUDA device that supports it and full precision elsewhere
    (bf16 autocast on a CPU is usually slower, not faster). ``cpu=True`` forces the CPU even with a GPU present.

    ``eval_every`` / ``checkpoint_every`` / ``log_every`` are in optimizer steps (0 turns the action off);
    an evaluation also runs after the last step whenever eval data is given.

    ``warmup_steps`` defaults to ``min(10, max_steps // 2)``; an explicit value must not exceed ``max_steps`` (the
    learning rate would never reach its peak). Numbers are checked for type as well as range, so a string such
    as ``lr="3e-4"`` (read from a YAML or command line without conversion) is refused with a ``ValueError``.

    ``dp=True`` turns on DP-SGD (:mod:`mlcore.training.dp`): per-example clipping to ``dp_max_grad_norm`` (C),
    Gaussian noise of std ``dp_noise_multiplier * C`` (or the multiplier that reaches ``dp_target_epsilon`` at
    ``dp_delta`` after ``max_steps`` steps; give exactly one of the two), Poisson sampling at rate
    ``batch_size * grad_accum_steps / N`` (``dp_poisson=False``: fixed-size batches, epsilon then approximate).
    ``batch_size`` is then the physical chunk size; ``grad_clip`` is unused (the per-example clip replaces it).
    """

    max_steps: int = 100
    batch_size: int = 8
    grad_accum_steps: int = 1
    lr: float = 3e-4
    min_lr_ratio: float = 0.0
    warmup_steps: int | None = None  # None: min(DEFAULT_WARMUP_STEPS, max_steps // 2)
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    eval_every: int = 0
    eval_batches: int | None = None
    eval_batch_size: int | None = None
    log_every: int = 1
    checkpoint_every: int = 0
    out_dir: str | None = None
    seed: int = 0
    mixed_precision: str = "auto"
    cpu: bool = False
    progress: bool = True
    # differential privacy (DP-SGD, mlcore.training.dp): off unless dp=True
    dp: bool = False
    dp_max_grad_norm: float = 1.0
    dp_noise_multiplier: float | None = None
    dp_target_epsilon: float | None = None
    dp_delta: float = 1e-5
    dp_poisson: bool = True

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum_steps"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {value!r}")
        if self.warmup_steps is None:
            # at most half the run: a short run still trains at its peak rate (max_steps=1: no warm-up, where
            # a one-step warm-up would train at lr 0)
            self.warmup_steps = min(DEFAULT_WARMUP_STEPS, self.max_steps // 2)
        for name in ("warmup_steps", "eval_every", "log_every", "checkpoint_every"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"TrainConfig.{name} must be a non-negative int, got {value!r}")
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"TrainConfig.warmup_steps must be <= max_steps={self.max_steps} (the warm-up would "
                             f"never reach the peak learning rate), got {self.warmup_steps}")
        for name in ("eval_batches", "eval_batch_size"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value <= 0):
                raise ValueError(f"TrainConfig.{name} must be a positive int or None, got {value!r}")
        if not _check_real("lr", self.lr, "a number > 0") > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if not 0.0 <= _check_real("min_lr_ratio", self.min_lr_ratio, "a number in [0, 1]") <= 1.0:
            raise ValueError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if _check_real("weight_decay", self.weight_decay, "a number >= 0") < 0:
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if not _check_real("eps", self.eps, "a number > 0") > 0:
            raise ValueError(f"TrainConfig.eps must be > 0, got {self.eps}")
        if self.grad_clip is not None and not _check_real("grad_clip", self.grad_clip, "a number > 0 or None") > 0:
            raise ValueError(f"TrainConfig.grad_clip must be > 0 or None, got {self.grad_clip}")
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise ValueError(f"TrainConfig.betas must be a pair (beta1, beta2), got {self.betas!r}")
        betas = tuple(_check_real("betas", b, "a pair of numbers in [0, 1)") for b in self.betas)
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"TrainConfig.betas must be a pair of numbers in [0, 1), got {self.betas!r}")
        if not _is_int(self.seed) or not -2**63 <= self.seed < 2**63:  # torch.manual_seed overflowed mid-run
            raise ValueError(f"TrainConfig.seed must be an int in [-2**63, 2**63), got {self.seed!r}")
        for name in ("cpu", "progress", "dp", "dp_poisson"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TrainConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if self.out_dir is not None and not isinstance(self.out_dir, (str, os.PathLike)):
            raise ValueError(f"TrainConfig.out_dir must be a path (str) or None, got {self.out_dir!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"TrainConfig.mixed_precision must be one of {MIXED_PRECISION}, "
                             f"got {self.mixed_precision!r}")
        if self.checkpoint_every and self.out_dir is None:
            raise ValueError("TrainConfig.checkpoint_every needs out_dir to write checkpoints into, got out_dir=None")
        self.betas = (betas[0], betas[1])
        if self.dp:
            self._check_dp()

    def _check_dp(self) -> None:
        if not _check_real("dp_max_grad_norm", self.dp_max_grad_norm, "a number > 0 (the clipping bound C)") > 0:
            raise ValueError(f"TrainConfig.dp_max_grad_norm (the clipping bound C) must be > 0, "
                             f"got {self.dp_max_grad_norm}")
        if not 0 < _check_real("dp_delta", self.dp_delta, "a number in (0, 1)") < 1:
            raise ValueError(f"TrainConfig.dp_delta must lie in (0, 1), got {self.dp_delta}")
        if (self.dp_noise_multiplier is None) == (self.dp_target_epsilon is None):
            raise ValueError("TrainConfig with dp=True needs exactly one of dp_noise_multiplier and "
                             f"dp_target_epsilon, got dp_noise_multiplier={self.dp_noise_multiplier!r}, "
                             f"dp_target_epsilon={self.dp_target_epsilon!r}")
        if self.dp_noise_multiplier is not None and _check_real(
                "dp_noise_multiplier", self.dp_noise_multiplier, "a number >= 0") < 0:
            raise ValueError(f"TrainConfig.dp_noise_multiplier must be >= 0, got {self.dp_noise_multiplier}")
        if self.dp_target_epsilon is not None and not _check_real(
                "dp_target_epsilon", self.dp_target_epsilon, "a number > 0") > 0:
            raise ValueError(f"TrainConfig.dp_target_epsilon must be > 0 (inf = no noise), "
                             f"got {self.dp_target_epsilon}")
        if self.mixed_precision == "fp16":
            raise ValueError("TrainConfig.mixed_precision='fp16' is not supported with dp=True (the loss scaler "
                             "would rescale the clipped sum); use 'bf16' or 'no'")

    @property
    def sequences_per_step(self) -> int:
        """Sequences consumed by one optimizer step, ``batch_size * grad_accum_steps``."""
        return self.batch_size * self.grad_accum_steps

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``out_dir`` as a str); ``TrainConfig.from_dict(c.to_dict()) == c`` up to that."""
        data = asdict(self)
        data["betas"] = list(self.betas)
        if self.out_dir is not None:  # a pathlib.Path is accepted but json.dumps cannot store it
            data["out_dir"] = os.fspath(self.out_dir)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from ``to_dict()`` output, refusing keys this version does not know."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"TrainConfig.from_dict: unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)
