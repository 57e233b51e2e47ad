"""Speculative decoding (Leviathan et al. 2023): greedy output token for token the target's own.

References: the target's own greedy ``generate`` (itself held to transformers' in test_generate_hf_parity.py),
on the project's trained target / draft pair and on tiny random models, one prompt and left-padded batches,
for each exact cache kind; the target's top-k sets from a full forward without a cache for sampled output.
The distribution test of the sampler (chi-square) lives in test_speculative_sampling.py.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from scipy import stats

from mlcore.inference import DynamicCache, StaticCache, generate
from mlcore.inference.speculative import SpeculativeStats, speculative_generate
from mlcore.model import Transformer, TransformerConfig

from ..model._model_testutils import left_padded_batch, llama_family
from ._gen_testutils import EXACT_KINDS, full_logits

PROMPTS = ["The for statement is used to", "Exceptions are raised when", "A class definition"]


@functools.cache
def trained() -> tuple[Transformer, Transformer, object]:
    from mlcore.training import load_tiny

    target, tok = load_tiny("target")
    draft, _ = load_tiny("draft")
    return target, draft, tok


def _trained_prompts(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    tok = trained()[2]
    enc = [tok.encode(p) for p in PROMPTS[:n]]
    T = max(map(len, enc))
    ids = torch.zeros(n, T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, e in enumerate(enc):
        ids[row, T - len(e):] = torch.tensor(e)
        mask[row, T - len(e):] = 1
    return ids, mask


@functools.cache
def random_pair() -> tuple[Transformer, Transformer]:
    """A 2-layer target and a 1-layer draft with other random weights, one vocabulary (128)."""
    target = Transformer.from_hf(llama_family("llama", seed=0)).eval()
    draft = Transformer.from_hf(llama_family("llama", seed=5, num_hidden_layers=1)).eval()
    return target, draft


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("rows", [1, 3])
def test_trained_pair_greedy_equals_target_greedy(rows: int, cache: str) -> None:
    target, draft, _ = trained()
    ids, mask = _trained_prompts(rows)
    ref = generate(target, ids, attention_mask=mask, max_new_tokens=16, cache=cache)
    out, stats = speculative_generate(target, draft, ids, attention_mask=mask, max_new_tokens=16, cache=cache,
                                      return_stats=True)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert isinstance(stats, SpeculativeStats) and 0.0 < stats.rate <= 1.0
    assert stats.new_tokens == 16 and stats.rounds < 16  # the trained draft saved target passes


@pytest.mark.parametrize("k", [1, 2, 7])
def test_trained_pair_any_draft_length(k: int) -> None:
    target, draft, _ = trained()
    ids, mask = _trained_prompts(3)
    ref = generate(target, ids, attention_mask=mask, max_new_tokens=12, cache="dynamic")
    out = speculative_generate(target, draft, ids, attention_mask=mask, max_new_tokens=12, num_draft_tokens=k)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("cache", EXACT_KINDS)
@pytest.mark.parametrize("lengths", [[9], [4, 9, 6]])
def test_random_pair_greedy_equals_target_greedy(lengths: list[int], cache: str) -> None:
    target, draft = random_pair()
    ids, mask = left_padded_batch(lengths, 9)
    ref = generate(target, ids, attention_mask=mask, max_new_tokens=20, cache="dynamic")
    out, stats = speculative_generate(target, draft, ids, attention_mask=mask, max_new_tokens=20, cache=cache,
                                      num_draft_tokens=3, return_stats=True)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert stats.rate < 1.0  # a different draft: rejections (and cache rollbacks) did happen


def test_random_pair_eos_rows_finish_at_different_steps() -> None:
    target, draft = random_pair()
    ids, mask = left_padded_batch([4, 9, 6], 9)
    free = generate(target, ids, attention_mask=mask, max_new_tokens=20)[:, 9:]
    eos = free[0, 4].item()
    ref = generate(target, ids, attention_mask=mask, max_new_tokens=20, eos_token_id=eos, pad_token_id=127)
    out = speculative_generate(target, draft, ids, attention_mask=mask, max_new_tokens=20, eos_token_id=eos,
                               pad_token_id=127)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert (ref[:, 9:] == 127).any(dim=1).tolist().count(True) >= 1  # a row stopped and was padded


@pytest.mark.parametrize("lengths", [[9], [4, 9, 6]])
def test_output_ends_at_the_last_rows_eos_mid_round(lengths: list[int]) -> None:
    """The last running row hits EOS inside a round whose later drafts were accepted: the output ends at that EOS
    as generate's and transformers' assisted generation do (it used to keep the round's all-pad columns)."""
    from mlcore.inference.hf import hf_assisted_generate

    hf = llama_family("llama", seed=0)
    target, _ = random_pair()
    ids, mask = left_padded_batch(lengths, 9)
    free = generate(target, ids, attention_mask=mask, max_new_tokens=12)[:, 9:]
    eos = [int(t) for t in free[:, 2]]  # every row stops by its third token, mid the first 5-token round
    ref = generate(target, ids, attention_mask=mask, max_new_tokens=12, eos_token_id=eos, pad_token_id=127)
    out, stats = speculative_generate(target, target, ids, attention_mask=mask, max_new_tokens=12,
                                      num_draft_tokens=4, eos_token_id=eos, pad_token_id=127, return_stats=True)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert out.shape[1] <= 9 + 3 and stats.new_tokens == out.shape[1] - 9
    if len(lengths) == 1:  # transformers' assisted generation runs one row only
        assisted = hf_assisted_generate(hf, hf, ids, attention_mask=mask, max_new_tokens=12, num_draft_tokens=4,
                                        eos_token_id=eos, pad_token_id=127)
        torch.testing.assert_close(out, assisted, rtol=0, atol=0)


def test_draft_equal_to_target_accepts_everything() -> None:
    target, _ = random_pair()
    ids, mask = left_padded_batch([4, 9, 6], 9)
    out, stats = speculative_generate(target, target, ids, attention_mask=mask, max_new_tokens=20,
                                      num_draft_tokens=4, return_stats=True)
    torch.testing.assert_close(out, generate(target, ids, attention_mask=mask, max_new_tokens=20), rtol=0, atol=0)
    assert stats.rate == 1.0 and stats.tokens_per_round == 5.0
    assert stats.rounds == math.ceil(20 / 5)


@pytest.mark.parametrize("make", ["dynamic", "static"])
def test_caches_are_rolled_back_to_the_output(make: str) -> None:
    """Passed cache objects end holding every column but the last token (which no forward has seen)."""
    target, draft = random_pair()
    ids, mask = left_padded_batch([4, 9], 9)
    if make == "dynamic":
        caches = (DynamicCache(), DynamicCache())
    else:
        caches = (StaticCache.for_model(target, 2, 29), StaticCache.for_model(draft, 2, 29))
    out = speculative_generate(target, draft, ids, attention_mask=mask, max_new_tokens=20, cache=caches)
    assert caches[0].get_seq_length() == out.shape[1] - 1
    assert caches[1].get_seq_length() <= out.shape[1] - 1
    torch.testing.assert_close(out, generate(target, ids, attention_mask=mask, max_new_tokens=20), rtol=0, atol=0)


def test_short_budgets() -> None:
    target, draft = random_pair()
    ids, mask = left_padded_batch([5], 5)
    assert torch.equal(speculative_generate(target, draft, ids, max_new_tokens=0), ids)
    for n in (1, 2):
        torch.testing.assert_close(speculative_generate(target, draft, ids, max_new_tokens=n),
                                   generate(target, ids, max_new_tokens=n), rtol=0, atol=0)


def _sampled(seed: int | None, **kw) -> torch.Tensor:
    target, draft = random_pair()
    ids, mask = left_padded_batch([4, 9, 6], 9)
    kw = {"temperature": 1.5, "top_k": 4, **kw}
    return speculative_generate(target, draft, ids, attention_mask=mask, max_new_tokens=16, seed=seed, **kw)


def test_sampled_output_reproducible_with_a_seed_and_global_rng_untouched() -> None:
    torch.manual_seed(0)
    a = _sampled(11)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    b = _sampled(11)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(state, torch.get_rng_state())
    assert not torch.equal(a, _sampled(12))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_tokens_stay_in_the_targets_top_k(seed: int) -> None:
    """The output follows the target's processed distribution, so no token leaves the target's top-k set,
    whatever the draft proposed."""
    target, _ = random_pair()
    _, mask = left_padded_batch([4, 9, 6], 9)
    out = _sampled(seed, top_k=3)
    logits = full_logits(target, out, mask)[:, :-1]  # (B, 16, V): what the target predicted at each new token
    new = out[:, 9:]
    chosen = logits.gather(-1, new[..., None]).squeeze(-1)
    kth = logits.topk(3, dim=-1).values[..., -1]
    assert bool((chosen >= kth - 1e-4).all()), (chosen - kth).min()
    assert bool((new != logits.argmax(-1)).any())  # sampled, not greedy


def _tiny_lm(seed: int) -> Transformer:
    """A one-layer model over 8 tokens whose next-token distributions are spread (init std 0.5)."""
    torch.manual_seed(seed)
    config = TransformerConfig(vocab_size=8, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32,
                               max_seq_len=16, initializer_range=0.5)
    return Transformer(config).eval()


def test_batched_rollback_keeps_the_target_distribution() -> None:
    """Rows of a batch keep the fewest accepted drafts among them; each row's two new tokens must still follow
    the target's joint distribution p(y1) p(y2 | y1) (computed exactly, 64 cells), Pearson chi-square at
    alpha = 1e-3 on N = 2000 rows (500 seeded calls of 4 identical rows). Cells expected below 5 are pooled.
    Power: lambda >= 4 N delta^2 (see test_speculative_sampling.py), >= 0.97 against any total-variation
    shift delta = 0.1 with up to 63 degrees of freedom. Negative control: the draft's first token is rejected."""
    target = _tiny_lm(0)
    draft = _tiny_lm(0)  # the target's weights plus noise: often right, often not
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=noise) * 0.2)
    prompt = torch.tensor([[1, 5, 2]])
    with torch.no_grad():
        p1 = target(prompt)[0, -1].double().softmax(-1)
        q1 = draft(prompt)[0, -1].double().softmax(-1)
        p2 = target(torch.cat([prompt.expand(8, 3), torch.arange(8)[:, None]], 1))[:, -1].double().softmax(-1)
    assert 0.2 < 0.5 * (p1 - q1).abs().sum() < 0.5  # total variation ~0.29: rejections are frequent
    counts = torch.zeros(64, dtype=torch.float64)
    rounds = []
    for seed in range(500):
        out, st = speculative_generate(target, draft, prompt.expand(4, 3), max_new_tokens=2, num_draft_tokens=1,
                                       temperature=1.0, seed=seed, return_stats=True)
        counts += torch.bincount(out[:, 3] * 8 + out[:, 4], minlength=64).double()
        rounds.append(st.rounds)
    assert set(rounds) == {1, 2}  # both paths ran: all rows accepted (bonus), and rows cut back to the minimum

    def pvalue(expected: torch.Tensor) -> float:
        expected = expected / expected.sum() * counts.sum()
        small = expected < 5
        obs = torch.cat([counts[~small], counts[small].sum()[None]])
        exp = torch.cat([expected[~small], expected[small].sum()[None]])
        return float(stats.chisquare(obs.numpy(), exp.numpy()).pvalue)

    assert pvalue((p1[:, None] * p2).flatten()) > 1e-3
    assert pvalue((q1[:, None] * p2).flatten()) < 1e-3
    lam = 4 * 2000 * 0.1**2
    assert stats.ncx2.sf(stats.chi2.isf(1e-3, 63), 63, lam) >= 0.97


def test_draft_with_another_vocabulary_is_refused() -> None:
    target, _ = random_pair()
    draft = Transformer.from_hf(llama_family("llama", seed=1, vocab_size=96)).eval()
    ids, _ = left_padded_batch([5], 5)
    with pytest.raises(ValueError, match=r"draft.*vocab_size=96.*128"):
        speculative_generate(target, draft, ids, max_new_tokens=4)


@pytest.mark.cuda
def test_cuda_greedy_equals_target_and_seeded_sampling_reproduces() -> None:
    import copy

    target, draft = (copy.deepcopy(m).to("cuda") for m in random_pair())
    ids, mask = (t.to("cuda") for t in left_padded_batch([4, 9, 6], 9))
    for cache in ("dynamic", "static"):
        out = speculative_generate(target, draft, ids, attention_mask=mask, max_new_tokens=16, cache=cache)
        torch.testing.assert_close(out, generate(target, ids, attention_mask=mask, max_new_tokens=16), rtol=0, atol=0)
    a, b = (speculative_generate(target, draft, ids, attention_mask=mask, max_new_tokens=16, temperature=1.0,
                                 seed=3) for _ in range(2))
    assert a.device.type == "cuda" and torch.equal(a, b)


def test_hand_built_ring_caches_need_a_rollback_of_the_draft_length() -> None:
    """A SlidingWindowCache built with rollback < num_draft_tokens could not undo a round's rejected drafts once
    its ring wrapped: crop failed rounds into the call, the prefill already written. Refused up front now (both
    caches left empty); rollback = num_draft_tokens, as cache="sliding" builds them, equals generate(target)."""
    from mlcore.inference import SlidingWindowCache

    target = Transformer.from_hf(llama_family("mistral", seed=1, sliding_window=5)).eval()
    draft = Transformer.from_hf(llama_family("mistral", seed=7, num_hidden_layers=1, sliding_window=5)).eval()
    ids, mask = left_padded_batch([4, 9], 9)
    kw = dict(attention_mask=mask, max_new_tokens=12, num_draft_tokens=4)
    short = (SlidingWindowCache.for_model(target, 2, 21, rollback=2), SlidingWindowCache.for_model(draft, 2, 21))
    with pytest.raises(ValueError, match=r"rollback=2, but num_draft_tokens=4"):
        speculative_generate(target, draft, ids, cache=short, **kw)
    assert [c.get_seq_length() for c in short] == [0, 0]
    enough = tuple(SlidingWindowCache.for_model(m, 2, 21, rollback=4) for m in (target, draft))
    torch.testing.assert_close(speculative_generate(target, draft, ids, cache=enough, **kw),
                               generate(target, ids, attention_mask=mask, max_new_tokens=12), rtol=0, atol=0)
