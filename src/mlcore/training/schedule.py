"""Learning-rate schedule: linear warm-up, then cosine decay (Loshchilov & Hutter, "SGDR", 2017).

With ``W`` warm-up steps, ``S`` total steps and a floor ``r = min_lr_ratio``, the multiplier of the peak
learning rate before optimizer step ``s`` (counting from 0) is

    f(s) = s / W                                              for s < W
    f(s) = r + (1 - r) * 0.5 * (1 + cos(pi * (s - W) / (S - W)))   for W <= s <= S

This is the convention of ``transformers.get_cosine_schedule_with_warmup`` (and, with ``r > 0``,
``get_cosine_with_min_lr_schedule_with_warmup``): step 0 runs at ``f(0) = 0`` when there is a warm-up,
and past ``S`` the cosine would rise again (the loop stops at ``S``).
The warm-up keeps Adam's early, badly estimated second moments from taking huge steps; the cosine spends
most of the run at a high rate and anneals smoothly at the end.
"""

from __future__ import annotations

import math


def cosine_with_warmup(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Multiplier ``f(step)`` of the peak learning rate (see the module docstring for the formula).

    Args:
        step: optimizer steps already taken (0 for the first step).
        warmup_steps: length ``W`` of the linear warm-up.
        total_steps: ``S``, the step at which the cosine reaches ``min_lr_ratio``.
        min_lr_ratio: the floor ``r`` in ``[0, 1]``, as a fraction of the peak.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps < 0 or total_steps <= 0:
        raise ValueError(f"need warmup_steps >= 0 and total_steps > 0, got {warmup_steps} and {total_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(0.0, min_lr_ratio + (1.0 - min_lr_ratio) * cosine)
