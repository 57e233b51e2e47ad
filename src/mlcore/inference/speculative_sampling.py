"""Speculative sampling: verify a draft's k tokens against the target in one step, keeping the target exact.

Leviathan, Kalman & Matias 2023, "Fast Inference from Transformers via Speculative Decoding" (Algorithm 1);
Chen et al. 2023, "Accelerating Large Language Model Decoding with Speculative Sampling".

A cheap draft model proposes ``x_1..x_k``, each ``x_i ~ q_i = q(. | prefix, x_<i)``. One forward pass of the
target gives ``p_i = p(. | prefix, x_<i)`` for i = 1..k+1. Then, for i = 1, 2, ...:

- accept ``x_i`` with probability ``min(1, p_i(x_i) / q_i(x_i))`` (here: ``u * q_i(x_i) < p_i(x_i)``,
  ``u ~ U[0, 1)``); at the first rejection stop and draw the replacement from the **residual**

      p'(x) = max(0, p_i(x) - q_i(x)) / sum_y max(0, p_i(y) - q_i(y));

- if all k are accepted, draw one bonus token from ``p_{k+1}``.

Every emitted token is then distributed exactly as the target would have drawn it: the chance of emitting x
at position i is ``q(x) min(1, p(x)/q(x)) + P(reject) p'(x) = min(q(x), p(x)) + max(0, p(x) - q(x)) = p(x)``.
Each round emits between 1 and k+1 tokens for one target pass; with a per-token acceptance rate alpha the
expected number is ``(1 - alpha^(k+1)) / (1 - alpha)``.

Greedy (temperature 0): accept while ``x_i == argmax p_i``, then emit ``argmax`` of the first unmatched
``p_i`` (or of ``p_{k+1}``) -- token for token the target's own greedy decoding.

All rows of a batch are verified at once; each accepts its own number of tokens. No host synchronisation.
``p`` and ``q`` must be the distributions the tokens were actually drawn with (after temperature / top-k /
top-p, see :mod:`mlcore.inference.sampling`); then the output follows the processed target distribution.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["Verification", "verify_draft", "AcceptanceStats"]


class Verification(NamedTuple):
    """Result of :func:`verify_draft` for B rows and k draft tokens.

    accepted_counts: (B,) int64 in [0, k], the accepted draft prefix length ``n`` per row.
    next_tokens: (B, k+1) int64; row b appends ``next_tokens[b, : n_b + 1]`` (the accepted prefix, then the
    residual or bonus token); positions after that hold ``fill_value``.
    """

    accepted_counts: Tensor
    next_tokens: Tensor


def _check(draft_tokens: Tensor, draft_probs: Tensor | None, target_probs: Tensor, greedy: bool) -> None:
    if not isinstance(draft_tokens, Tensor) or draft_tokens.dim() != 2 or draft_tokens.is_floating_point():
        seen = f"{tuple(draft_tokens.shape)} {draft_tokens.dtype}" if isinstance(draft_tokens, Tensor) else "?"
        raise ValueError(f"draft_tokens must be an integer (B, k) tensor, got {seen}")
    B, k = draft_tokens.shape
    if not isinstance(target_probs, Tensor) or target_probs.dim() != 3 or not target_probs.is_floating_point():
        raise ValueError("target_probs must be a floating (B, k+1, V) tensor")
    if tuple(target_probs.shape[:2]) != (B, k + 1):
        raise ValueError(
            f"target_probs must be (B, k+1, V) = ({B}, {k + 1}, V) for draft_tokens {(B, k)}, "
            f"got {tuple(target_probs.shape)}"
        )
    if target_probs.device != draft_tokens.device:
        raise ValueError(f"target_probs on {target_probs.device}, draft_tokens on {draft_tokens.device}")
    if draft_probs is None:
        if not greedy:
            raise ValueError("draft_probs (B, k, V) is required unless greedy=True")
        return
    expected = (B, k, target_probs.shape[-1])
    if not isinstance(draft_probs, Tensor) or tuple(draft_probs.shape) != expected:
        seen = tuple(draft_probs.shape) if isinstance(draft_probs, Tensor) else repr(draft_probs)
        raise ValueError(f"draft_probs must be (B, k, V) = {expected} (the draft's vocabulary is the target's), got {seen}")
    if not draft_probs.is_floating_point() or draft_probs.device != target_probs.device:
        raise ValueError(f"draft_probs must be floating on {target_probs.device}, got {draft_probs.dtype} on {draft_probs.device}")


def verify_draft(
    draft_tokens: Tensor,
    draft_probs: Tensor | None,
    target_probs: Tensor,
    *,
    generator: torch.Generator | None,
    greedy: bool = False,
    fill_value: int = -1,
) -> Verification:
    """Accept a prefix of each row's draft and pick the token after it (Leviathan et al. 2023, Algorithm 1).

    draft_tokens: (B, k) the proposed ids; draft_probs: (B, k, V) the draft distributions ``q_i`` they were
    drawn from (may be None when ``greedy``); target_probs: (B, k+1, V) the target's ``p_i`` at the same
    positions plus one more. ``generator`` (on the same device) supplies every random number; None makes a
    fresh non-deterministically seeded one (the global RNG is never used). Returns :class:`Verification`.
    """
    _check(draft_tokens, draft_probs, target_probs, greedy)
    B, k = draft_tokens.shape
    V = target_probs.shape[-1]
    device = target_probs.device
    tokens = draft_tokens.long()

    # 1. Which drafted tokens pass? (B, k) bool.
    if greedy:
        passes = tokens == target_probs[:, :k].argmax(dim=-1)
    else:
        if generator is None:
            generator = torch.Generator(device=device)
            generator.seed()
        p_x = target_probs[:, :k].gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # p_i(x_i), (B, k)
        q_x = draft_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # q_i(x_i), (B, k)
        u = torch.rand((B, k), generator=generator, device=device, dtype=p_x.dtype)
        passes = u * q_x < p_x  # u < p/q without dividing; p = q = 0 rejects

    # 2. n = length of the all-accepted prefix: a running product stops at the first rejection.
    n = passes.long().cumprod(dim=-1).sum(dim=-1)  # (B,) in [0, k]

    # 3. The distribution of the token after the prefix: p_{n+1}, minus q_{n+1} if that draft was rejected.
    p_n = target_probs.gather(1, n.view(B, 1, 1).expand(B, 1, V)).squeeze(1)  # (B, V)
    if greedy:
        last = p_n.argmax(dim=-1)
    else:
        if k > 0:
            q_n = draft_probs.gather(1, n.clamp(max=k - 1).view(B, 1, 1).expand(B, 1, V)).squeeze(1)
            q_n = q_n * (n < k).unsqueeze(-1).to(q_n.dtype)  # all accepted: no draft to subtract (bonus token)
        else:
            q_n = torch.zeros_like(p_n)
        residual = (p_n - q_n).clamp(min=0)  # max(0, p - q), (B, V)
        total = residual.sum(dim=-1, keepdim=True)
        # p == q up to rounding leaves no residual mass; then p itself is the right distribution.
        dist = torch.where(total > 0, residual / total.clamp(min=torch.finfo(total.dtype).tiny), p_n)
        last = torch.multinomial(dist.float(), num_samples=1, generator=generator).squeeze(-1)

    # 4. Per row: accepted prefix, then ``last``, then fill.
    j = torch.arange(k + 1, device=device).unsqueeze(0)  # (1, k+1)
    padded = torch.nn.functional.pad(tokens, (0, 1), value=fill_value)  # (B, k+1)
    out = torch.where(j < n.unsqueeze(-1), padded, torch.full_like(padded, fill_value))
    out = torch.where(j == n.unsqueeze(-1), last.unsqueeze(-1), out)
    return Verification(n, out)


class AcceptanceStats:
    """Accumulates acceptance over rounds on the device; reading a figure syncs once.

    ``update(accepted_counts (B,), num_draft_tokens, active=None (B,) bool)``: rows with ``active`` False
    (finished sequences) are not counted. ``rate`` = accepted / proposed draft tokens (alpha in the paper's
    sense, measured); ``tokens_per_round`` = mean tokens emitted per row and target pass (accepted + 1).
    """

    def __init__(self) -> None:
        self._accepted: Tensor | int = 0
        self._proposed: Tensor | int = 0
        self._row_rounds: Tensor | int = 0

    def update(self, accepted_counts: Tensor, num_draft_tokens: int, active: Tensor | None = None) -> None:
        if not isinstance(num_draft_tokens, int) or isinstance(num_draft_tokens, bool) or num_draft_tokens < 0:
            raise ValueError(f"num_draft_tokens must be an int >= 0, got {num_draft_tokens!r}")
        counts = accepted_counts.long()
        rows = torch.ones_like(counts) if active is None else active.to(torch.long)
        if rows.shape != counts.shape:
            raise ValueError(f"active must have accepted_counts' shape {tuple(counts.shape)}, got {tuple(rows.shape)}")
        self._accepted = self._accepted + (counts * rows).sum()
        self._row_rounds = self._row_rounds + rows.sum()
        self._proposed = self._proposed + rows.sum() * num_draft_tokens

    @property
    def rate(self) -> float:
        proposed = int(self._proposed)
        return float(int(self._accepted) / proposed) if proposed else float("nan")

    @property
    def tokens_per_round(self) -> float:
        rounds = int(self._row_rounds)
        return float((int(self._accepted) + rounds) / rounds) if rounds else float("nan")
