"""The ecosystem twin of ``dp.py``: DP-SGD with Opacus (Yousefpour et al. 2021, "Opacus: User-Friendly
Differential Privacy Library in PyTorch") on the same model, loss and batches, for the parity tests and the
benchmark.

Opacus wraps the model in a ``GradSampleModule`` (hooks that store ``p.grad_sample`` (B, *shape) during
backward; einsum rules per layer type, torch.func for the rest) and the optimizer in a ``DPOptimizer``
(flat clipping with the same ``C / (norm + 1e-6)`` factor, noise ``N(0, (sigma C)^2)`` on the sum, division by
the expected batch size). ``PrivacyEngine.make_private`` does both and swaps the data loader for a Poisson
sampler; its ``RDPAccountant`` is the one ``dp_accountant.py`` reproduces.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .dp_optimizer import check_max_grad_norm


def opacus_sequence_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of each example's mean next-token NLL (the loss ``dp_optimizer.sequence_loss`` uses
    per example): logits (B, T, V), labels (B, T) with -100 = ignore."""
    target = labels[:, 1:]  # (B, T-1)
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), target, ignore_index=-100,
                          reduction="none")  # (B, T-1)
    count = (target != -100).sum(1).clamp(min=1)
    return (nll.sum(1) / count).sum()


class OpacusDP:
    """Opacus' ``GradSampleModule`` + ``DPOptimizer`` around ``model`` and an AdamW over its trainable
    parameters. ``step(batch)`` runs forward, backward, clip, noise and the optimizer step, as mlcore's loop
    does with ``TrainConfig(dp=True)``: ``p.grad`` before the AdamW step is (clipped sum + noise) /
    ``expected_batch_size``, mlcore's ``DPGradient`` gradient. ``generator`` seeds Opacus' noise (tests share
    it with mlcore's). ``close()`` removes Opacus' hooks."""

    def __init__(self, model: nn.Module, *, noise_multiplier: float, max_grad_norm: float,
                 expected_batch_size: int, lr: float = 1e-3, weight_decay: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        check_max_grad_norm(max_grad_norm)
        # loss_reduction="mean" (Opacus' default): the optimizer divides the noisy clipped sum by
        # expected_batch_size, as mlcore's DPGradient does; "sum" would skip that division and give a gradient
        # expected_batch_size times larger. The hooks then undo the 1/B of the mean loss in grad_sample.
        self.model = GradSampleModule(model, loss_reduction="mean")
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = DPOptimizer(torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay),
                                     noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                                     expected_batch_size=expected_batch_size, loss_reduction="mean",
                                     generator=generator)

    def backward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Forward + backward of the mean over the batch of the per-example losses; fills ``p.grad_sample``
        with each example's own gradient. Returns the summed per-example loss.

        An empty batch (0 rows: Poisson sampling drew no example) runs no forward (models refuse 0 rows); the
        twin stores empty ``grad_sample`` (0, *shape) as Opacus' hooks do for the empty batches its Poisson
        data loader yields, so the step is noise / ``expected_batch_size``, as in mlcore's loop."""
        if batch["input_ids"].size(0) == 0:
            for p in self.model.parameters():
                if p.requires_grad:
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
            return torch.zeros(())
        out = self.model(batch["input_ids"], attention_mask=batch.get("attention_mask"))
        logits = out if isinstance(out, torch.Tensor) else out.logits  # transformers models return a ModelOutput
        loss = opacus_sequence_loss(logits, batch["labels"])
        with warnings.catch_warnings():  # "full backward hook is firing ... no inputs require gradients"
            warnings.simplefilter("ignore", UserWarning)
            (loss / batch["input_ids"].size(0)).backward()
        return loss.detach()

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        loss = self.backward(batch)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss)

    def close(self) -> None:
        self.model._close()
