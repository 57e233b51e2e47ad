"""Speculative decoding: a small draft model proposes, the target model verifies k tokens in one forward pass.

Leviathan, Kalman & Matias 2023, "Fast Inference from Transformers via Speculative Decoding"; Chen et al. 2023,
"Accelerating Large Language Model Decoding with Speculative Sampling". One round, for a sequence ``x`` of
length S whose last token ``x_S`` is not yet in either cache:

    draft:   d_1 ~ q(. | x),  d_2 ~ q(. | x, d_1), ...,  d_k ~ q(. | x, d_<k)   k cheap steps, draft cache
    target:  p_1..p_{k+1} = target([x_S, d_1, ..., d_k])                       ONE pass of k+1 tokens
    verify:  accept d_1..d_n (Algorithm 1, :func:`~mlcore.inference.speculative_sampling.verify_draft`),
             then one more token from the residual max(0, p - q) (or the bonus p_{k+1} if n = k)
    rollback: target cache -> S + n columns (x, d_1..d_n); draft cache -> at most the same (``crop``)

The target sees ``x_S`` and the drafts together, so its k+1 output rows are exactly the distributions it
would have produced one token at a time (for RoPE scalings whose frequencies follow the call's longest
position, dynamic NTK and LongRoPE, the pass is cut where ``generate``'s calls would switch frequencies); with
temperature 0 acceptance means ``d_i == argmax p_i`` and the
output is token for token the target's own greedy decoding. The new token that ends a round enters both
caches at the start of the next one (with ``d_k`` too, for the draft, when all k were accepted).

Batches. Both caches keep one length for every row, so a round keeps the *same* number of tokens in every
row: ``m = min`` of the accepted counts over the rows still running, and each row emits ``m + 1`` tokens
(rows that accepted more give back their later drafts, which the draft proposes again next round). Dropping
tokens at a point that the other rows decide keeps every row's distribution exact (each kept token is still
distributed as the target's, given the tokens before it), and greedy output stays the target's own; only
throughput pays. Rows that finished (EOS) do not take part in the minimum.

Everything runs on the inputs' device; per round one host synchronisation reads ``m`` (the caches' ``crop``
takes a Python int), and one more checks for EOS when ``eos_token_id`` is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral
from typing import Any

import torch
from torch import Tensor, nn

from mlcore.inference.cache_factory import make_cache
from mlcore.inference.generate import _eos_tensor, check_language_model, pad_token, prompt_mask
from mlcore.inference.sampling import is_greedy, make_generator, process_logits, validate_sampling_args
from mlcore.inference.speculative_sampling import AcceptanceStats, verify_draft

__all__ = ["speculative_generate", "SpeculativeStats"]


class SpeculativeStats(AcceptanceStats):
    """:class:`AcceptanceStats` (``rate``, ``tokens_per_round``) plus the call counts of one generation.

    rounds: target verify passes (prefill included, as round one; a dynamic-NTK / LongRoPE target may cut one
    pass into several calls, see :func:`_target_forward`); draft_forwards: draft forward passes;
    new_tokens: tokens appended per row. ``rate`` counts each row's own accepted drafts, before the batch
    minimum; ``new_tokens / rounds`` is what a row actually gained per target pass.
    """

    def __init__(self) -> None:
        super().__init__()
        self.rounds = 0
        self.draft_forwards = 0
        self.new_tokens = 0

    def __repr__(self) -> str:
        return (f"SpeculativeStats(rate={self.rate:.3f}, tokens_per_round={self.tokens_per_round:.2f}, "
                f"rounds={self.rounds}, draft_forwards={self.draft_forwards}, new_tokens={self.new_tokens})")


def _check_pair(target: nn.Module, draft: nn.Module, input_ids: Tensor) -> None:
    for name, model in (("target", target), ("draft", draft)):
        check_language_model(name, model)
        device = next(model.parameters()).device
        if device != input_ids.device:
            raise ValueError(f"{name} is on {device} but input_ids on {input_ids.device}; move them to one device")
    tv, dv = target.config.vocab_size, draft.config.vocab_size
    if tv != dv:
        raise ValueError(f"draft has vocab_size={dv} but target has vocab_size={tv}: speculative decoding compares "
                         "their next-token distributions id by id, so both must share one vocabulary")


def _caches(cache: str | Sequence[Any], target: nn.Module, draft: nn.Module, batch: int, max_len: int,
            device: torch.device, rollback: int) -> tuple[Any, Any]:
    if isinstance(cache, str):
        pair: Sequence[Any] = (cache, cache)
    elif isinstance(cache, (tuple, list)) and len(cache) == 2:
        pair = cache
    else:
        raise ValueError(f"cache must be a cache name or a (target_cache, draft_cache) pair, got {cache!r}")
    if isinstance(pair[1], str) and pair[1] != "sliding" and max_len > draft.config.max_seq_len:
        raise ValueError(f"prompt + max_new_tokens - 1 = {max_len} cached columns exceed the draft's max_seq_len="
                         f"{draft.config.max_seq_len} (lower max_new_tokens)")
    # a ring buffer must keep `rollback` columns beyond its window to undo a rejected draft
    opts = [{"rollback": rollback} if c == "sliding" else {} for c in pair]
    target_cache = make_cache(pair[0], target, batch=batch, max_len=max_len, device=device, **opts[0])
    draft_cache = make_cache(pair[1], draft, batch=batch, max_len=max_len, device=device, **opts[1])
    if target_cache is draft_cache:
        raise ValueError("cache: target and draft need two different cache objects")
    for name, kv in (("target", target_cache), ("draft", draft_cache)):
        _check_ring_rollback(name, kv, max_len, rollback)
    return target_cache, draft_cache


def _check_ring_rollback(name: str, kv: Any, max_len: int, rollback: int) -> None:
    """A hand-built SlidingWindowCache whose ring wraps within ``max_len`` columns must undo up to
    ``num_draft_tokens`` rejected columns per round: with a smaller ``rollback`` its ``crop`` failed only rounds
    later, after the prefill had written into it. Refused here, before any write."""
    from mlcore.inference.sliding_cache import SlidingWindowCache

    if not isinstance(kv, SlidingWindowCache) or kv.rollback >= rollback:
        return
    held = (kv.sinks + 1 if kv.sinks else 0) + kv.capacity  # columns the ring holds before it wraps
    if max_len > held:
        raise ValueError(f"the {name}'s SlidingWindowCache was built with rollback={kv.rollback}, but "
                         f"num_draft_tokens={rollback} rejected drafts may be rolled back per round and its ring "
                         f"wraps after {held} of the {max_len} cached columns; build it with rollback={rollback}")


def _forward(model: nn.Module, kv: Any, tokens: Tensor, start: int, mask: Tensor, offset: Tensor,
             keep: int) -> Tensor:
    """Logits (B, keep, V) for ``tokens`` (B, n) at columns [start, start + n) of the sequence.

    The first call of a model (``start == 0``) carries the prompt, so it gets the padding mask and is
    validated; later calls pass positions ``column + offset`` (offset = real tokens - prompt columns, per row).
    """
    n = tokens.shape[1]
    if start == 0:
        full = torch.cat([mask, mask.new_ones(mask.shape[0], max(n - mask.shape[1], 0))], dim=1)[:, :n]
        return model(tokens, attention_mask=full, cache=kv, logits_to_keep=keep)
    positions = torch.arange(start, start + n, device=tokens.device)[None, :] + offset  # (B, n)
    return model(tokens, cache=kv, position_ids=positions, logits_to_keep=keep, validate=False)


def _target_forward(model: nn.Module, kv: Any, tokens: Tensor, start: int, mask: Tensor, offset: Tensor,
                    keep: int, prompt_len: int) -> Tensor:
    """:func:`_forward` for the target, whose rows must equal the ones ``generate`` computes one token at a time.

    With dynamic NTK or LongRoPE (``rope.per_call``) the rotary frequencies of a call depend on its longest
    position, so one pass over ``[x_S, d_1..d_k]`` rotated the earlier columns with the later columns'
    frequencies (LongRoPE's long factors, a larger NTK base): the target's greedy tokens then differed from
    ``generate(target)`` (and from transformers' greedy ``generate``) once a round reached past
    ``original_max_position_embeddings`` / ``max_position_embeddings``. The pass is cut where ``generate``'s own
    calls would see other frequencies: the prompt alone (its prefill), the columns within ``L0`` together, then
    LongRoPE's long columns together and dynamic NTK's one by one."""
    rope = getattr(model, "rope", None)
    n = tokens.shape[1]
    if not getattr(rope, "per_call", False):
        return _forward(model, kv, tokens, start, mask, offset, keep)
    limit = rope.per_call_limit
    # generate's step at column c sees the largest position of that column over the rows: c + max(offset)
    first_past = max(limit - int(offset.max()), prompt_len)  # first column whose call would reach past L0
    cuts = {start + n} | {c for c in (prompt_len, first_past) if start < c < start + n}
    if rope.rope_type == "dynamic":  # the NTK base grows with every column past L0
        cuts |= set(range(max(first_past, start) + 1, start + n))
    pieces, a = [], start
    for b in sorted(cuts):
        kept = max(0, b - max(a, start + n - keep))  # this piece's share of the last `keep` columns
        logits = _forward(model, kv, tokens[:, a - start:b - start], a, mask, offset, max(kept, 1))
        if kept:
            pieces.append(logits)
        a = b
    return torch.cat(pieces, dim=1)  # (B, keep, V)


def _probs(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None) -> Tensor:
    """Sampling distribution (..., V) in float32 after temperature / top-k / top-p (as ``generate`` draws)."""
    shape = logits.shape
    flat = process_logits(logits.reshape(-1, shape[-1]), temperature=temperature, top_k=top_k, top_p=top_p)
    return torch.softmax(flat.float(), dim=-1).view(shape)


@torch.no_grad()
def speculative_generate(
    target: nn.Module,
    draft: nn.Module,
    input_ids: Tensor,
    *,
    max_new_tokens: int,
    num_draft_tokens: int = 4,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    attention_mask: Tensor | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    seed: int | None = None,
    cache: str | Sequence[Any] = "dynamic",
    return_stats: bool = False,
) -> Tensor | tuple[Tensor, SpeculativeStats]:
    """Continue left-padded prompts ``input_ids`` (B, T) with ``target``, drafting with ``draft``; (B, T + n).

    Same contract as :func:`mlcore.inference.generate` (greedy at ``temperature=0``, else samples from the
    target's distribution after top-k / top-p; rows stop at ``eos_token_id`` and are padded with
    ``pad_token_id``; a per-call ``seed`` and a local generator). Greedy output equals ``generate(target, ...)``.
    num_draft_tokens: k, tokens the draft proposes per round (the last round proposes fewer so that no more
        than ``max_new_tokens`` columns are ever cached). cache: a cache name used for both models, or a
        ``(target_cache, draft_cache)`` pair of names or empty cache objects; caches must support ``crop``.
    return_stats: also return a :class:`SpeculativeStats` (acceptance rate, rounds, ...).
    """
    # as transformers (and generate): without an attention_mask a pad id found in the prompt marks padding
    mask = prompt_mask(target, input_ids, attention_mask, pad_token_id, eos_token_id, max_new_tokens)
    max_new_tokens = int(max_new_tokens)  # a numpy integer would leak into the caches' sizes
    validate_sampling_args(temperature, top_k, top_p)
    _check_pair(target, draft, input_ids)
    if not isinstance(num_draft_tokens, Integral) or isinstance(num_draft_tokens, bool) or num_draft_tokens < 1:
        raise ValueError(f"num_draft_tokens must be an int >= 1, got {num_draft_tokens!r}")
    num_draft_tokens = int(num_draft_tokens)  # numpy integers too, as max_new_tokens (the caches take a Python int)
    eos = _eos_tensor(eos_token_id, input_ids.device)
    vocab = target.config.vocab_size
    pad_token_id = pad_token(pad_token_id, eos, vocab)
    stats = SpeculativeStats()
    B, T = input_ids.shape
    seq = input_ids.long()
    if max_new_tokens == 0:
        return (seq.clone(), stats) if return_stats else seq.clone()
    # at most T + max_new_tokens - 1 columns are ever cached (the last round proposes fewer drafts to keep it so)
    target_kv, draft_kv = _caches(cache, target, draft, B, T + max_new_tokens - 1, input_ids.device,
                                  rollback=num_draft_tokens)
    greedy = is_greedy(temperature)  # 0, or below GREEDY_BELOW (sampling.py)
    generator = None if greedy else make_generator(seed, input_ids.device)
    offset = mask.sum(dim=1, keepdim=True) - T  # (B, 1): position = column + offset
    active = torch.ones(B, dtype=torch.bool, device=seq.device)
    target_len = draft_len = 0  # columns each cache holds (the sequence's last token is never cached yet)

    while seq.shape[1] - T < max_new_tokens:
        S = seq.shape[1]
        k = min(num_draft_tokens, max_new_tokens - (S - T) - 1)
        # 1. The draft proposes d_1..d_k, catching up first on the columns its cache lacks.
        drafts, draft_probs = [], []
        tokens, start = seq[:, draft_len:], draft_len
        for _ in range(k):
            logits = _forward(draft, draft_kv, tokens, start, mask, offset, keep=1)[:, -1]  # (B, V)
            stats.draft_forwards += 1
            start += tokens.shape[1]
            if greedy:
                token = logits.argmax(dim=-1)
            else:
                q = _probs(logits, temperature, top_k, top_p)
                token = torch.multinomial(q, num_samples=1, generator=generator).squeeze(-1)
                draft_probs.append(q)
            drafts.append(token)
            tokens = token[:, None]
        if k:
            draft_len = start
        proposal = torch.stack(drafts, dim=1) if drafts else seq.new_empty(B, 0)  # (B, k)

        # 2. The target scores [uncached tail of x, d_1..d_k] in one pass: p_1..p_{k+1}.
        fed = torch.cat([seq[:, target_len:], proposal], dim=1)
        logits = _target_forward(target, target_kv, fed, target_len, mask, offset, k + 1, T)  # (B, k+1, V)
        stats.rounds += 1
        target_len += fed.shape[1]
        if greedy:  # argmax of the logits is the argmax of p; no softmax rounding can create ties
            check = verify_draft(proposal, None, logits.float(), generator=None, greedy=True, fill_value=pad_token_id)
        else:
            q_all = torch.stack(draft_probs, dim=1) if draft_probs else logits.new_empty(B, 0, vocab).float()
            check = verify_draft(proposal, q_all, _probs(logits, temperature, top_k, top_p), generator=generator,
                                 fill_value=pad_token_id)
        stats.update(check.accepted_counts, k, active)

        # 3. Every row keeps m + 1 tokens, m = the fewest drafts a running row accepted; roll both caches back.
        m = int(torch.where(active, check.accepted_counts, k).min())
        new = check.next_tokens[:, : m + 1]  # (B, m+1): accepted drafts then the residual / bonus token
        new = torch.where(active[:, None], new, torch.full_like(new, pad_token_id))
        finished = False
        if eos is not None:
            is_eos = torch.isin(new, eos) & active[:, None]
            after = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0  # strictly after a row's first EOS
            new = new.masked_fill(after, pad_token_id)
            active = active & ~is_eos.any(dim=1)
            finished = not bool(active.any())
            if finished:  # end at the last row's EOS, as generate does: no all-pad columns after it
                new = new[:, : int(is_eos.long().argmax(dim=1).max()) + 1]
        seq = torch.cat([seq, new], dim=1)
        stats.new_tokens += new.shape[1]
        keep_cols = seq.shape[1] - 1  # x and the kept drafts are cached; the new last token is not
        target_kv.crop(keep_cols)
        target_len = keep_cols
        if draft_len > keep_cols:
            draft_kv.crop(keep_cols)
            draft_len = keep_cols
        if finished:
            break
    return (seq, stats) if return_stats else seq
