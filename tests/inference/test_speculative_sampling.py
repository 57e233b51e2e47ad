"""Speculative sampling keeps the target's distribution exactly (Leviathan et al. 2023, Theorem 3.5).

The reference is the target distribution itself: tokens emitted through ``verify_draft`` are compared with
``p`` by Pearson's chi-square test (``scipy.stats.chisquare``) at alpha = 0.001, on fixed seeds.

Power. For N draws, a true distribution ``p'`` at total-variation distance ``delta`` from ``p`` gives the
statistic a noncentral chi-square with noncentrality ``lambda = N sum_i (p'_i - p_i)^2 / p_i``. By
Cauchy-Schwarz on the cells where p' > p (total mass ``s``) and the rest, ``lambda >= N delta^2 (1/s + 1/(1-s))
>= 4 N delta^2`` for any such shift. ``_power`` evaluates ``P(ncx2(df, lambda) > chi2.isf(alpha, df))`` at that
lower bound; each test asserts its own figure, so a change of N or V cannot silently weaken it:
- first emitted token, 4 cells with p > 0 (df = 3), N = 20000: lambda >= 32, power 0.967 against any TV shift
  of 0.02 (asserted >= 0.95); the bonus token after full acceptance (df = 4, N = 20000): power 0.952;
- second emitted token given the first, pooled over the 3 first tokens that can be accepted (df = 12),
  N = 29928 accepted rows: lambda >= 4 N delta^2 when every condition is shifted by 0.02, power 0.980
  (asserted >= 0.9);
- two tokens from a full speculative loop (25 cells, df = 24), N = 60000: lambda >= 96, power 0.99997.
Negative controls show the same tests reject a draft-distributed output and a wrongly stated ``q``.
"""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from mlcore.inference.speculative_sampling import AcceptanceStats, verify_draft

ALPHA = 1e-3
V = 5
# Target and draft next-token distributions at position 1: q puts mass where p has none (token 4) and p has a
# token q never proposes (token 3), so both the acceptance test and the residual are exercised.
P1 = torch.tensor([0.40, 0.25, 0.15, 0.20, 0.00], dtype=torch.float64)
Q1 = torch.tensor([0.10, 0.45, 0.15, 0.00, 0.30], dtype=torch.float64)


def _power(n: int, df: int, delta: float = 0.02) -> float:
    lam = 4 * n * delta**2
    return float(stats.ncx2.sf(stats.chi2.isf(ALPHA, df), df, lam))


def _chisquare_pvalue(tokens: torch.Tensor, p: torch.Tensor) -> float:
    """Pearson chi-square of the token counts against p; cells with p = 0 must be empty and are left out."""
    counts = torch.bincount(tokens, minlength=p.numel()).double()
    assert counts[p == 0].sum() == 0, "a token with target probability 0 was emitted"
    keep = p > 0
    return float(stats.chisquare(counts[keep].numpy(), (p[keep] * counts.sum()).numpy()).pvalue)


def _draw(dist: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One id per row of dist (B, V) -- the test's own draft sampler."""
    return torch.multinomial(dist.float(), 1, generator=g).squeeze(-1)


def _random_dist(rows: int, g: torch.Generator) -> torch.Tensor:
    """rows (rows, V) drawn uniformly from the simplex (Dirichlet(1): normalised exponentials)."""
    e = -torch.rand(rows, V, generator=g, dtype=torch.float64).log()
    return e / e.sum(-1, keepdim=True)


def test_first_emitted_token_follows_the_target():
    N, k = 20_000, 3
    assert _power(N, df=int((P1 > 0).sum()) - 1) >= 0.95
    g = torch.Generator().manual_seed(0)
    x1 = _draw(Q1.expand(N, V), g)
    rest_q = torch.full((N, k - 1, V), 1.0 / V, dtype=torch.float64)
    draft_tokens = torch.cat([x1[:, None], _draw(rest_q.reshape(-1, V), g).view(N, k - 1)], 1)
    draft_probs = torch.cat([Q1.expand(N, 1, V), rest_q], 1)
    target_probs = torch.cat([P1.expand(N, 1, V), torch.full((N, k, V), 1.0 / V, dtype=torch.float64)], 1)
    n, tokens = verify_draft(draft_tokens, draft_probs, target_probs, generator=g)
    assert _chisquare_pvalue(tokens[:, 0], P1) > ALPHA
    # Acceptance of x_1 happens with probability sum_x min(p, q) = 1 - TV(p, q) = 0.5 (binomial, 5 sigma).
    accept = (n >= 1).double().mean().item()
    expected = torch.minimum(P1, Q1).sum().item()
    assert abs(accept - expected) < 5 * (expected * (1 - expected) / N) ** 0.5
    # Negative controls: the draft's own tokens, and a verifier told the wrong q, are both detected.
    assert _chisquare_pvalue(x1[P1[x1] > 0], P1) < ALPHA  # q restricted to p's support
    wrong_q = torch.cat([torch.full((N, 1, V), 1.0 / V, dtype=torch.float64), rest_q], 1)
    _, bad = verify_draft(draft_tokens, wrong_q, target_probs, generator=torch.Generator().manual_seed(0))
    assert _chisquare_pvalue(bad[:, 0], P1) < ALPHA


def test_second_emitted_token_follows_the_target_given_the_first():
    """k = 2 with position-2 distributions that depend on x_1 (p2[x_1], q2[x_1] tables, as a real prefix would).

    For rows that accepted x_1 the second emitted token (accepted x_2 or the residual) must follow p2[x_1];
    the chi-square statistics of the 5 conditions are summed (df = 20).
    """
    N = 60_000
    g = torch.Generator().manual_seed(1)
    p2_table, q2_table = _random_dist(V, g), _random_dist(V, g)
    x1 = _draw(Q1.expand(N, V), g)
    x2 = _draw(q2_table[x1], g)
    draft_probs = torch.stack([Q1.expand(N, V), q2_table[x1]], 1)
    target_probs = torch.stack([P1.expand(N, V), p2_table[x1], torch.full((N, V), 1.0 / V, dtype=torch.float64)], 1)
    n, tokens = verify_draft(torch.stack([x1, x2], 1), draft_probs, target_probs, generator=g)
    rows = n >= 1
    stat, df = 0.0, 0
    for t in range(V):
        second = tokens[rows & (tokens[:, 0] == t), 1]
        if second.numel() == 0:
            continue
        counts = torch.bincount(second, minlength=V).double()
        stat += float(stats.chisquare(counts.numpy(), (p2_table[t] * counts.sum()).numpy()).statistic)
        df += V - 1
    accepted_rows = int(rows.sum())
    assert accepted_rows > 25_000 and _power(accepted_rows, df) >= 0.9
    assert stats.chi2.sf(stat, df) > ALPHA


def test_bonus_token_after_full_acceptance_follows_the_last_target_position():
    """q = p at position 1, so every row accepts; the bonus token must follow p_2, not max(0, p_2 - q_1)."""
    N = 20_000
    assert _power(N, df=V - 1) >= 0.95
    g = torch.Generator().manual_seed(5)
    p2 = torch.tensor([0.05, 0.10, 0.15, 0.30, 0.40], dtype=torch.float64)
    x1 = _draw(P1.expand(N, V), g)
    n, tokens = verify_draft(x1[:, None], P1.expand(N, 1, V), torch.stack([P1.expand(N, V), p2.expand(N, V)], 1),
                             generator=g)
    assert (n == 1).all() and torch.equal(tokens[:, 0], x1)
    assert _chisquare_pvalue(tokens[:, 1], p2) > ALPHA


def _speculative_bigram_run(P, Q, start, M, k, g, greedy):
    """Full speculative loop with bigram target P (V, V) and draft Q (V, V): the first M tokens of every row."""
    B = start.numel()
    out = torch.full((B, M + k + 2), -1)
    length, last = torch.zeros(B, dtype=torch.long), start.clone()
    stats_ = AcceptanceStats()
    while int(length.min()) < M:
        prev, drafted, q_rows, p_rows = last, [], [], []
        for _ in range(k):
            q_rows.append(Q[prev])
            p_rows.append(P[prev])
            prev = Q[prev].argmax(-1) if greedy else _draw(Q[prev], g)
            drafted.append(prev)
        p_rows.append(P[prev])
        n, tokens = verify_draft(torch.stack(drafted, 1), torch.stack(q_rows, 1), torch.stack(p_rows, 1),
                                 generator=g, greedy=greedy)
        stats_.update(n, k)
        j = torch.arange(k + 1)
        pos = torch.where(j <= n[:, None], (length[:, None] + j).clamp(max=M + k), M + k + 1)
        out.scatter_(1, pos, tokens)
        length += n + 1
        last = tokens.gather(1, n[:, None]).squeeze(1)
    return out[:, :M], stats_


def test_speculative_loop_two_tokens_follow_the_target_chain():
    N, k = 60_000, 2
    g = torch.Generator().manual_seed(2)
    P, Q = _random_dist(V, g), _random_dist(V, g)
    start = torch.zeros(N, dtype=torch.long)
    seqs, acc = _speculative_bigram_run(P, Q, start, M=2, k=k, g=g, greedy=False)
    joint = (P[0][:, None] * P).reshape(-1)  # P(t1 = a, t2 = b) = P[0, a] P[a, b]
    assert _power(N, df=V * V - 1) >= 0.999
    assert _chisquare_pvalue(seqs[:, 0] * V + seqs[:, 1], joint) > ALPHA
    assert 0.0 < acc.rate < 1.0 and 1.0 < acc.tokens_per_round < k + 1


def test_greedy_speculative_loop_equals_plain_greedy_decoding():
    g = torch.Generator().manual_seed(3)
    Vb = 12
    P = torch.rand(Vb, Vb, generator=g).softmax(-1)
    Q = (P.log() + 0.15 * torch.randn(Vb, Vb, generator=g)).softmax(-1)  # agrees with P's argmax only sometimes
    start, M, k = torch.arange(Vb).repeat(3), 20, 4
    seqs, acc = _speculative_bigram_run(P, Q, start, M, k, g, greedy=True)
    plain, last = [], start
    for _ in range(M):
        last = P[last].argmax(-1)
        plain.append(last)
    assert torch.equal(seqs, torch.stack(plain, 1))
    assert 0.0 < acc.rate < 1.0, "the drafts should be partly right for this test to mean something"


def test_greedy_verification_by_hand():
    target = torch.zeros(2, 4, 6)
    for i, t in enumerate([3, 1, 4, 5]):
        target[:, i, t] = 1.0
    draft = torch.tensor([[3, 1, 2], [0, 1, 4]])
    n, tokens = verify_draft(draft, None, target, generator=None, greedy=True)
    assert n.tolist() == [2, 0]
    assert tokens.tolist() == [[3, 1, 4, -1], [3, -1, -1, -1]]
    n, tokens = verify_draft(torch.tensor([[3, 1, 4]]), None, target[:1], generator=None, greedy=True)
    assert n.tolist() == [3] and tokens.tolist() == [[3, 1, 4, 5]]  # all accepted: the bonus token


def test_identical_draft_is_always_accepted_and_seeded_runs_repeat():
    g = torch.Generator().manual_seed(4)
    probs = torch.rand(64, 4, V, generator=g).softmax(-1)
    draft = _draw(probs[:, :3].reshape(-1, V), g).view(64, 3)
    state = torch.get_rng_state()
    n, _ = verify_draft(draft, probs[:, :3], probs, generator=torch.Generator().manual_seed(9))
    assert (n == 3).all()
    a = verify_draft(draft, probs[:, :3] * 0.5 + 0.1, probs, generator=torch.Generator().manual_seed(9))
    b = verify_draft(draft, probs[:, :3] * 0.5 + 0.1, probs, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a.next_tokens, b.next_tokens) and torch.equal(a.accepted_counts, b.accepted_counts)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG was used"


def test_zero_draft_tokens_samples_the_target():
    target = torch.tensor([[[0.0, 0.0, 1.0]]])
    n, tokens = verify_draft(torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0, 3), target,
                             generator=torch.Generator().manual_seed(0))
    assert n.tolist() == [0] and tokens.tolist() == [[2]]


def test_acceptance_stats_aggregate_rounds_and_skip_finished_rows():
    s = AcceptanceStats()
    s.update(torch.tensor([4, 0, 2]), 4)
    s.update(torch.tensor([1, 3, 9]), 4, active=torch.tensor([True, True, False]))
    assert s.rate == pytest.approx((4 + 0 + 2 + 1 + 3) / (5 * 4))
    assert s.tokens_per_round == pytest.approx((10 + 5) / 5)
    with pytest.raises(ValueError, match="active"):
        s.update(torch.tensor([1, 2]), 4, active=torch.tensor([True]))
    with pytest.raises(ValueError, match="num_draft_tokens"):
        s.update(torch.tensor([1]), -1)


@pytest.mark.parametrize(
    ("draft_tokens", "draft_probs", "target_probs", "greedy", "match"),
    [
        (torch.zeros(2, 3), torch.rand(2, 3, 5), torch.rand(2, 4, 5), False, "draft_tokens"),
        (torch.zeros(2, 3, dtype=torch.long), torch.rand(2, 3, 5), torch.rand(2, 3, 5), False, "target_probs"),
        (torch.zeros(2, 3, dtype=torch.long), torch.rand(2, 3, 7), torch.rand(2, 4, 5), False, "vocabulary"),
        (torch.zeros(2, 3, dtype=torch.long), None, torch.rand(2, 4, 5), False, "draft_probs"),
        (torch.zeros(2, 3, dtype=torch.long), torch.rand(2, 3, 5), torch.zeros(2, 4, 5, dtype=torch.long), False,
         "target_probs"),
    ],
)
def test_bad_input_is_refused_clearly(draft_tokens, draft_probs, target_probs, greedy, match):
    with pytest.raises(ValueError, match=match):
        verify_draft(draft_tokens, draft_probs, target_probs, generator=None, greedy=greedy)


@pytest.mark.cuda
def test_cuda_greedy_and_sampled_verification():
    g = torch.Generator("cuda").manual_seed(0)
    probs = torch.rand(4096, 3, V, device="cuda").softmax(-1)
    draft = torch.multinomial(probs[:, :2].reshape(-1, V), 1, generator=g).view(4096, 2)
    n, tokens = verify_draft(draft, probs[:, :2], probs, generator=g)
    assert n.is_cuda and tokens.is_cuda and (n == 2).all()
    n_cpu, t_cpu = verify_draft(draft.cpu(), None, probs.cpu(), generator=None, greedy=True)
    n_gpu, t_gpu = verify_draft(draft, None, probs, generator=None, greedy=True)
    assert torch.equal(n_gpu.cpu(), n_cpu) and torch.equal(t_gpu.cpu(), t_cpu)
    q = (probs[:, 0] * 0.5 + 0.5 / V)[:, None]  # a different draft: first emitted token must follow p_1
    x = torch.multinomial(q[:, 0], 1, generator=g)
    p64 = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05], dtype=torch.float64)
    p = p64.to("cuda", torch.float32)
    _, out = verify_draft(x, q, torch.stack([p.expand(4096, V), p.expand(4096, V)], 1), generator=g)
    assert _chisquare_pvalue(out[:, 0].cpu(), p64) > ALPHA
