"""Greedy ``generate`` against transformers' ``generate(do_sample=False)`` on the same weights, token for token.

Reference: transformers' own generation (through :func:`mlcore.inference.hf.hf_generate`, which
``test_hf_path.py`` holds to a direct ``model.generate`` call) with its DynamicCache and its StaticCache, for
tiny Llama, Mistral (sliding window 5, shorter than prompt 9 + output 12) and GPT-2 (learned positions), one
prompt and a left-padded batch of three, for every mlcore cache kind present. Plus EOS (rows finishing at
different steps, padded after), the repetition penalty (with pads that would be penalised if they counted)
and, per decode step, the cached logits against one full forward without a cache (1e-4, fp32).
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

from mlcore.inference import generate, make_cache
from mlcore.inference.hf import hf_generate
from mlcore.inference.speculative import speculative_generate
from mlcore.model import Transformer

from ..model._model_testutils import left_padded_batch
from ._gen_testutils import (
    ARCHS,
    CACHE_KINDS,
    EXACT_KINDS,
    NEW,
    PROMPT_LEN,
    batch,
    full_logits,
    pair,
    stepwise_logits,
)

ATOL = 1e-4
# int8 keys / values round per (token, head): measured max error 2-5 % of the logits' standard deviation
INT8_REL = 0.1
PAD = 127


@functools.cache
def hf_reference(arch: str, kind: str, hf_cache: str) -> torch.Tensor:
    hf, _ = pair(arch)
    ids, mask = batch(kind)
    return hf_generate(hf, ids, attention_mask=mask, max_new_tokens=NEW, cache_implementation=hf_cache)


@pytest.mark.parametrize("cache", CACHE_KINDS)
@pytest.mark.parametrize("kind", ["single", "padded"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_greedy_tokens_equal_transformers(arch: str, kind: str, cache: str) -> None:
    _, model = pair(arch)
    ids, mask = batch(kind)
    out = generate(model, ids, attention_mask=mask, max_new_tokens=NEW, cache=cache)
    assert out.shape == (ids.shape[0], PROMPT_LEN + NEW)
    # int8 rounds the cache; on these models it never flips an argmax (checked here, exact like the others)
    torch.testing.assert_close(out, hf_reference(arch, kind, "dynamic"), rtol=0, atol=0)
    torch.testing.assert_close(out, hf_reference(arch, kind, "static"), rtol=0, atol=0)


def test_mistral_window_changes_the_output() -> None:
    """The sliding window is active in the Mistral case: without it the same weights continue differently."""
    _, model = pair("mistral")
    assert model.config.sliding_window == 5 < PROMPT_LEN + NEW
    ids, mask = batch("padded")
    full = Transformer(dataclasses.replace(model.config, sliding_window=None)).eval()
    full.load_state_dict(model.state_dict())
    out = generate(full, ids, attention_mask=mask, max_new_tokens=NEW)
    assert not torch.equal(out, hf_reference("mistral", "padded", "dynamic"))


def _eos_finishing_at_different_steps(new_tokens: torch.Tensor) -> int:
    """A token that ends some rows, at different steps or not at all, before the last step (from HF's output)."""
    for token in new_tokens.flatten().tolist():
        firsts = []
        for row in new_tokens.tolist():
            firsts.append(row.index(token) if token in row else None)
        finishing = [f for f in firsts if f is not None]
        if len(set(firsts)) >= 2 and finishing and min(finishing) < new_tokens.shape[1] - 2:
            return token
    raise AssertionError("no token finishes the rows at different steps")


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_eos_rows_finish_at_different_steps(arch: str, cache: str) -> None:
    hf, model = pair(arch)
    ids, mask = batch("padded")
    eos = _eos_finishing_at_different_steps(hf_reference(arch, "padded", "dynamic")[:, PROMPT_LEN:])
    ref = hf_generate(hf, ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=PAD)
    out = generate(model, ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=PAD,
                   cache=cache)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    ends = []
    for row in out[:, PROMPT_LEN:].tolist():
        end = row.index(eos) if eos in row else None
        ends.append(end)
        if end is not None:
            assert all(t == PAD for t in row[end + 1:]), row  # padded after it stopped
    assert len(set(ends)) >= 2, ends  # rows stopped at different steps (or one ran on)


def test_eos_list_and_default_pad_match_transformers() -> None:
    hf, model = pair("llama")
    ids, mask = batch("padded")
    ref_tokens = hf_reference("llama", "padded", "dynamic")[:, PROMPT_LEN:]
    eos = [ref_tokens[0, 3].item(), ref_tokens[2, 5].item()]
    ref = hf_generate(hf, ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=eos)  # pads with eos[0]
    out = generate(model, ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=eos)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_generation_stops_when_every_row_finished() -> None:
    hf, model = pair("gpt2")
    ids, mask = batch("single")
    eos = hf_reference("gpt2", "single", "dynamic")[0, PROMPT_LEN + 2].item()
    out = generate(model, ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=eos)
    ref = hf_generate(hf, ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=eos)
    assert out.shape[1] < PROMPT_LEN + NEW and out[0, -1].item() == eos
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("penalty", [1.3, 0.7])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_repetition_penalty_matches_transformers(arch: str, penalty: float) -> None:
    """Greedy + penalty against transformers' RepetitionPenaltyLogitsProcessor. The pads carry a token the
    unpenalised run emits, so penalising the padding (which transformers 5.x leaves out) would show."""
    hf, model = pair(arch)
    ids, mask = batch("padded")
    plain = hf_reference(arch, "padded", "dynamic")
    ids = ids.masked_fill(mask == 0, int(plain[0, PROMPT_LEN]))
    ref = hf_generate(hf, ids, attention_mask=mask, max_new_tokens=NEW, repetition_penalty=penalty)
    out = generate(model, ids, attention_mask=mask, max_new_tokens=NEW, repetition_penalty=penalty)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    unpenalised = generate(model, ids, attention_mask=mask, max_new_tokens=NEW)
    assert not torch.equal(out, unpenalised)  # the penalty did change the continuation


@pytest.mark.parametrize("cache", CACHE_KINDS)
@pytest.mark.parametrize("arch", list(ARCHS))
def test_each_decode_step_equals_a_full_forward(arch: str, cache: str) -> None:
    _, model = pair(arch)
    _, mask = batch("padded")
    seq = hf_reference(arch, "padded", "dynamic")  # prompt + 12 greedy tokens
    kv = make_cache(cache, model, batch=seq.shape[0], max_len=seq.shape[1])
    stepped = stepwise_logits(model, seq, mask, kv)
    reference = full_logits(model, seq, mask)
    assert stepped.shape == reference.shape == (3, NEW + 1, model.config.vocab_size)
    # the padded positions of a row are not compared: every row's last PROMPT_LEN + t columns are real
    err = (stepped - reference).abs().max().item()
    tol = ATOL if cache in EXACT_KINDS else INT8_REL * reference.std().item()
    assert err <= tol, f"{cache}: max |logit error| {err:.2e} > {tol:.2e}"


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_longrope_generation_crosses_the_original_length_as_transformers(cache: str) -> None:
    """LongRoPE switches to its long factors once a call's positions pass L0 = 16: a 12-token prompt with 16 new
    tokens crosses it mid-decode, token for token as transformers' generate (which switches per call too)."""
    from ..model._model_testutils import left_padded_batch, llama_family

    g = torch.Generator().manual_seed(0)
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 16,
            "short_factor": (1 + torch.rand(8, generator=g)).tolist(),
            "long_factor": (1 + 8 * torch.rand(8, generator=g)).tolist()}
    hf = llama_family("llama", rope_parameters=rope, head_dim=16)
    model = Transformer.from_hf(hf)
    ids, mask = left_padded_batch([12, 7], 12)
    ref = hf.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False, pad_token_id=0)
    assert torch.equal(generate(model, ids, attention_mask=mask, max_new_tokens=16, cache=cache), ref)
    with torch.no_grad():
        assert (model(ids[:1]) - hf(ids[:1]).logits).abs().max() < 1e-4


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_masked_column_inside_the_prompt_is_penalised_as_transformers(arch: str) -> None:
    """transformers leaves only each row's *leading* padding out of the repetition penalty (prompt_ignore_length
    = the index of its first token): a 0 inside a row's mask is penalised. The hole holds the token the
    unpenalised run emits first, so leaving it out (as mlcore did) changes the output."""
    hf, model = pair(arch)
    ids, mask = batch("padded")
    mask = mask.clone()
    hole = PROMPT_LEN - 3
    mask[:, hole] = 0
    first = hf_generate(hf, ids, attention_mask=mask, max_new_tokens=1)[:, -1]
    ids = ids.clone()
    ids[:, hole] = first
    ref = hf_generate(hf, ids, attention_mask=mask, max_new_tokens=NEW, repetition_penalty=5.0)
    out = generate(model, ids, attention_mask=mask, max_new_tokens=NEW, repetition_penalty=5.0, cache="dynamic")
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_without_a_mask_a_pad_id_in_the_prompt_marks_padding_as_transformers(arch: str) -> None:
    """transformers' generate, given no attention_mask, masks ``input_ids == pad_token_id`` when the pad id
    occurs in the prompt and is no EOS id; with the pad id among the EOS ids it masks nothing."""
    from mlcore.inference.hf import hf_generation_config

    hf, model = pair(arch)
    ids, mask = batch("padded")
    ids = ids.masked_fill(mask == 0, PAD)

    def hf_no_mask(**kw) -> torch.Tensor:  # transformers' own generate, left to infer the mask itself
        with torch.no_grad():
            return hf.generate(ids, generation_config=hf_generation_config(max_new_tokens=NEW, **kw))

    ref = hf_no_mask(pad_token_id=PAD)
    assert torch.equal(ref, hf_generate(hf, ids, attention_mask=mask, max_new_tokens=NEW, pad_token_id=PAD))
    torch.testing.assert_close(generate(model, ids, max_new_tokens=NEW, pad_token_id=PAD), ref, rtol=0, atol=0)
    torch.testing.assert_close(hf_generate(hf, ids, max_new_tokens=NEW, pad_token_id=PAD), ref, rtol=0, atol=0)
    as_eos = hf_no_mask(pad_token_id=PAD, eos_token_id=PAD)
    out = generate(model, ids, max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=PAD)
    torch.testing.assert_close(out, as_eos, rtol=0, atol=0)


@pytest.mark.parametrize("cache", EXACT_KINDS)
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_prompt_reaching_the_last_position_generates_as_transformers(arch: str, cache: str) -> None:
    """The last new token is never fed back, so a prompt of T tokens needs T + max_new_tokens - 1 positions:
    a prompt filling all 64 of GPT-2's learned positions still gets its one next token, as in transformers
    (mlcore refused it, counting T + max_new_tokens). One token more is refused, by name."""
    hf, model = pair(arch)
    L = model.config.max_seq_len
    for new in (1, 3):
        ids, mask = left_padded_batch([L - new + 1, 5], L - new + 1)
        ref = hf_generate(hf, ids, attention_mask=mask, max_new_tokens=new)
        out = generate(model, ids, attention_mask=mask, max_new_tokens=new, cache=cache)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
        spec = speculative_generate(model, model, ids, attention_mask=mask, max_new_tokens=new, cache=cache)
        torch.testing.assert_close(spec, ref, rtol=0, atol=0)
    if cache != "sliding":  # a ring buffer may stream past max_seq_len
        with pytest.raises(ValueError, match=r"max_new_tokens.*max_seq_len=64"):
            generate(model, ids, attention_mask=mask, max_new_tokens=new + 1, cache=cache)
