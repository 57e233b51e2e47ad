"""DP-SGD's gradient (Abadi et al. 2016, "Deep Learning with Differential Privacy", Algorithm 1).

For one logical batch L_t, drawn by Poisson sampling (every example independently with probability q):

    g_i      = grad of example i's own loss                                 (per_sample_grads.py)
    g_i_bar  = g_i * min(1, C / (||g_i||_2 + 1e-6))                          clip: ||g_i_bar|| <= C
    g_tilde  = ( sum_{i in L_t} g_i_bar  +  N(0, sigma^2 C^2 I) ) / (q N)      noise once, on the sum

``||g_i||`` is the norm over ALL privatised parameters together (flat clipping). The divisor ``q N`` is the
*expected* batch size, a constant: dividing by the realised size |L_t| would leak it (Opacus does the same).
Any optimizer (AdamW here) may then use ``g_tilde``: post-processing keeps the guarantee. The 1e-6 in the clip
factor is Opacus' (it keeps the factor finite at a zero gradient); the sensitivity stays <= C.

**Virtual batches.** A logical batch larger than memory allows is cut into physical chunks; per-sample
gradients are clipped and *added* chunk by chunk, and the noise is added once, after the last chunk. (Adding
noise per chunk would multiply the noise by sqrt(#chunks), and averaging per chunk would break the sensitivity.)

**Sampling.** The RDP accountant (dp_accountant.py) assumes Poisson sampling, so the logical batch size varies
(Binomial(N, q)). ``poisson=False`` uses the loop's fixed-size shuffled batches instead, as much DP code does:
then the reported epsilon is the usual approximation, not a proof.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from .dp_accountant import _check_sample_rate
from .per_sample_grads import Batch, ExampleLoss, per_sample_grads, trainable_parameters

CLIP_EPS = 1e-6


def _check_finite(name: str, value: float, *, positive: bool) -> float:
    """``value`` as a float, or a ``ValueError`` naming ``name``: a finite number, > 0 or >= 0. NaN slipped past
    ``value < 0`` (a NaN noise std drew no noise at all) and inf made the gradient 0 or inf."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (value > 0 if positive else value >= 0))
    if not ok:
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def check_max_grad_norm(max_grad_norm: float) -> float:
    return _check_finite("max_grad_norm (the clipping bound C)", max_grad_norm, positive=True)


def per_sample_norms(grads: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """||g_i||_2 over all parameters together: (B,) from ``{name: (B, *shape)}``."""
    per_param = [torch.linalg.vector_norm(g.reshape(g.size(0), -1), dim=1) for g in grads.values()]  # no (B, n) temp
    return torch.linalg.vector_norm(torch.stack(per_param, 1), dim=1)


def clip_and_sum(grads: Mapping[str, torch.Tensor], max_grad_norm: float
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Clip every example's gradient to norm ``max_grad_norm`` and sum over the batch.

    Returns ``({name: sum_i g_i * min(1, C / (||g_i|| + 1e-6))}, norms (B,) before clipping)``."""
    c = check_max_grad_norm(max_grad_norm)
    norms = per_sample_norms(grads)
    factor = (c / (norms + CLIP_EPS)).clamp(max=1.0)  # (B,)
    summed = {name: torch.einsum("b,b...->...", factor.to(g.dtype), g) for name, g in grads.items()}
    return summed, norms


def add_noise(summed: Mapping[str, torch.Tensor], noise_std: float, generator: torch.Generator | None
              ) -> dict[str, torch.Tensor]:
    """``summed + N(0, noise_std^2)`` elementwise (noise_std = sigma * C), drawn from ``generator``."""
    noise_std = _check_finite("noise_std", noise_std, positive=False)
    out = {}
    for name, s in summed.items():
        noise = torch.normal(0.0, noise_std, s.shape, generator=generator, device=s.device, dtype=s.dtype) \
            if noise_std > 0 else torch.zeros_like(s)
        out[name] = s + noise
    return out


def poisson_sample(num_examples: int, sample_rate: float, generator: torch.Generator) -> torch.Tensor:
    """Indices of a Poisson-sampled batch: each of ``num_examples`` kept with probability ``sample_rate``.
    Returns a LongTensor (|L|,), possibly empty (then the step's gradient is pure noise)."""
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 0:
        raise ValueError(f"num_examples must be an int >= 0, got {num_examples!r}")
    q = _check_sample_rate(sample_rate)
    keep = torch.rand(num_examples, generator=generator) < q
    return keep.nonzero().squeeze(1)


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator that is a pure function of ``(seed, step)``: resumable runs draw the same batches and noise.
    (Reproducible noise suits tests and teaching; a production run must seed from a secret, e.g.
    ``secrets.randbits(63)``, or the noise can be regenerated and subtracted.)"""
    return torch.Generator(device=device).manual_seed((int(seed) * 1_000_003 + int(step)) % (2**63 - 1))


def sequence_loss(logits: torch.Tensor, row: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of ONE example for DP-SGD: its mean next-token NLL over its own targets (``row['labels']`` (1, T),
    -100 = ignore). aux = [summed NLL, target count], for the token-weighted loss the loop logs."""
    labels = row["labels"][:, 1:]  # (1, T-1)
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (1, T-1, V)
    valid = labels != -100
    nll = -logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (1, T-1)
    total = (nll * valid).sum()
    count = valid.sum()
    return total / count.clamp(min=1), torch.stack([total.detach(), count.to(total.dtype)])


class DPGradient:
    """Writes the DP-SGD gradient ``g_tilde`` of one logical batch into ``p.grad`` of the privatised parameters.

    ``expected_batch_size`` is q * N (the divisor); ``noise_multiplier`` sigma; ``max_grad_norm`` C. Parameters
    privatised: those with ``requires_grad`` (after ``apply_lora``, only the adapters: DP-LoRA)."""

    def __init__(self, model: nn.Module, *, max_grad_norm: float, noise_multiplier: float,
                 expected_batch_size: float, loss_fn: ExampleLoss = sequence_loss) -> None:
        self.model = model
        self.max_grad_norm = check_max_grad_norm(max_grad_norm)
        self.noise_multiplier = _check_finite("noise_multiplier", noise_multiplier, positive=False)
        self.expected_batch_size = _check_finite("expected_batch_size", expected_batch_size, positive=True)
        self.loss_fn = loss_fn
        self.params = trainable_parameters(model)

    def compute(self, chunks: Iterable[Batch], generator: torch.Generator | None) -> dict[str, float]:
        """Per-sample grads chunk by chunk, clip, add up, add noise once, divide, store in ``.grad``.

        Returns statistics: ``examples`` (|L|), ``nll`` (summed), ``targets``, ``grad_norm`` (mean per-example
        norm before clipping) and ``clipped`` (fraction of examples clipped)."""
        acc = {n: torch.zeros_like(p, dtype=torch.float32 if p.dtype in (torch.float16, torch.bfloat16)
                                   else p.dtype) for n, p in self.params.items()}
        stats = {"examples": 0.0, "nll": 0.0, "targets": 0.0, "grad_norm": 0.0, "clipped": 0.0}
        params = {n: p.detach() for n, p in self.params.items()}
        for chunk in chunks:
            if chunk["input_ids"].size(0) == 0:
                continue
            grads, aux = per_sample_grads(self.model, chunk, self.loss_fn, params)
            summed, norms = clip_and_sum(grads, self.max_grad_norm)
            del grads
            for n in acc:
                acc[n] += summed[n].to(acc[n].dtype)
            stats["examples"] += norms.numel()
            stats["nll"] += float(aux[:, 0].sum())
            stats["targets"] += float(aux[:, 1].sum())
            stats["grad_norm"] += float(norms.sum())
            stats["clipped"] += float((norms > self.max_grad_norm).sum())
        noisy = add_noise(acc, self.noise_multiplier * self.max_grad_norm, generator)
        for n, p in self.params.items():
            p.grad = (noisy[n] / self.expected_batch_size).to(p.dtype)
        if stats["examples"]:
            stats["grad_norm"] /= stats["examples"]
            stats["clipped"] /= stats["examples"]
        return stats
