"""Differentially private training (DP-SGD, Abadi et al. 2016) in mlcore's loop, and its privacy arithmetic.

    from mlcore.training.dp import epsilon, noise_multiplier_for
    epsilon(noise_multiplier=1.0, sample_rate=0.01, steps=1000, delta=1e-5)        # -> 2.10
    noise_multiplier_for(target_epsilon=3.0, sample_rate=0.01, steps=1000, delta=1e-5)

    train(model, data, TrainConfig(dp=True, dp_target_epsilon=3.0, dp_delta=1e-5, dp_max_grad_norm=1.0,
                                   batch_size=16, grad_accum_steps=4, max_steps=200))

With ``TrainConfig(dp=True)`` each optimizer step of :func:`mlcore.training.train` (i) draws a logical batch by
Poisson sampling at rate ``q = batch_size * grad_accum_steps / N`` (``dp_poisson=False``: the loop's fixed-size
batches), (ii) cuts it into physical chunks of ``batch_size`` examples, (iii) computes, clips and adds up
per-example gradients chunk by chunk, (iv) adds ``N(0, (sigma C)^2)`` once and divides by ``q N``, then (v) lets
AdamW step; the RDP accountant (Mironov et al. 2019) reports epsilon after every step in the log and the
progress bar. After ``apply_lora`` only the adapters are trainable, so only they are privatised (DP-LoRA): the
frozen public base never sees a gradient. Pieces: ``dp_accountant.py`` (the accountant),
``per_sample_grads.py`` (vmap/grad and the Linear outer product), ``dp_optimizer.py`` (clip, noise, sampling).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from .data import batch_indices, get_batch
from .dp_accountant import DEFAULT_ORDERS, RDPAccountant, epsilon, epsilon_floor, noise_multiplier_for
from .dp_optimizer import DPGradient, add_noise, clip_and_sum, poisson_sample, sequence_loss, step_generator
from .per_sample_grads import (
    LinearGradSampler,
    check_per_sample_support,
    linear_per_sample_grads,
    per_sample_grads,
)

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = [
    "DEFAULT_ORDERS", "DPGradient", "DPTraining", "LinearGradSampler", "RDPAccountant", "add_noise",
    "check_per_sample_support", "clip_and_sum", "epsilon", "epsilon_floor", "linear_per_sample_grads",
    "noise_multiplier_for", "per_sample_grads", "poisson_sample", "sequence_loss",
]


class DPTraining:
    """The DP side of one :func:`mlcore.training.train` call: sampling, the private gradient, the accountant.

    ``noise_multiplier`` is ``config.dp_noise_multiplier`` or, given ``config.dp_target_epsilon``, the one
    :func:`noise_multiplier_for` finds for ``config.max_steps`` steps at ``sample_rate``."""

    def __init__(self, model: nn.Module, config: TrainConfig, num_examples: int) -> None:
        check_per_sample_support(model)
        self.config = config
        self.num_examples = num_examples
        logical = config.batch_size * config.grad_accum_steps
        if logical > num_examples:
            raise ValueError(f"TrainConfig.batch_size * grad_accum_steps = {logical} (the expected logical batch) "
                             f"exceeds the {num_examples} training examples; the sample rate would be > 1")
        self.sample_rate = logical / num_examples
        if config.dp_noise_multiplier is not None:
            self.noise_multiplier = float(config.dp_noise_multiplier)
        else:
            self.noise_multiplier = noise_multiplier_for(config.dp_target_epsilon, self.sample_rate,
                                                         config.max_steps, config.dp_delta)
        self.gradient = DPGradient(model, max_grad_norm=config.dp_max_grad_norm,
                                   noise_multiplier=self.noise_multiplier, expected_batch_size=logical)
        self.accountant = RDPAccountant()

    def resume(self, steps_done: int) -> None:
        """Account for ``steps_done`` steps already taken (after loading a checkpoint)."""
        if steps_done:
            self.accountant.step(self.noise_multiplier, self.sample_rate, steps_done)

    def indices(self, step: int) -> torch.Tensor:
        """Example indices of logical batch ``step``: Poisson at rate q, or the loop's fixed-size batches."""
        c = self.config
        if c.dp_poisson:
            return poisson_sample(self.num_examples, self.sample_rate, step_generator(c.seed, step))
        k = c.grad_accum_steps
        return torch.cat([batch_indices(self.num_examples, c.batch_size, step * k + i, seed=c.seed)
                          for i in range(k)])

    def step(self, train_data: Mapping[str, torch.Tensor], step: int,
             labels_of: Callable[[dict[str, torch.Tensor]], torch.Tensor], device: torch.device) -> dict[str, float]:
        """Write the private gradient of logical batch ``step`` into ``.grad``, account for it, and return
        ``{examples, nll, targets, grad_norm, clipped, tokens, epsilon}``."""
        idx = self.indices(step)
        bs = self.config.batch_size

        def chunks() -> Iterator[dict[str, torch.Tensor]]:
            for start in range(0, idx.numel(), bs):
                batch = get_batch(train_data, idx[start:start + bs])
                batch = {**batch, "labels": labels_of(batch)}
                yield {key: v.to(device) for key, v in batch.items()}

        noise_device = next(iter(self.gradient.params.values())).device
        stats = self.gradient.compute(chunks(), step_generator(self.config.seed + 1, step, noise_device))
        self.accountant.step(self.noise_multiplier, self.sample_rate)
        stats["tokens"] = float(idx.numel() * train_data["input_ids"].size(1))
        stats["epsilon"] = self.epsilon()
        return stats

    def epsilon(self) -> float:
        return self.accountant.epsilon(self.config.dp_delta)
