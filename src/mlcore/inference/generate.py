"""Autoregressive generation with a KV cache: one prefill pass over the prompt, then one token per decode step.

    prefill:  logits_T = model(prompt (B, T), cache)          -- O(T^2) attention once, fills the cache
    decode:   x_{t+1} ~ p(. | x_<=t) from model(x_t (B, 1), cache)   -- O(t) per token, the cache grows by one

Without a cache every new token recomputes the keys and values of the whole prefix (O(t^2) per token,
see :func:`generate_no_cache`, kept for the benchmark's baseline). Greedy decoding here equals transformers'
``generate(do_sample=False)`` token for token, left-padded batches included: positions come from the mask
(``cumsum - 1``), a finished row is padded with ``pad_token_id`` while the others go on, and generation stops
when every row has finished.

Validation happens once per call; the decode steps call the model with ``validate=False`` and
``logits_to_keep=1``, so a step pays neither a host sync for checks nor the vocabulary projection of the
whole prompt.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from numbers import Integral
from typing import Any

import torch
from torch import Tensor, nn

from mlcore.inference.cache_factory import make_cache
from mlcore.inference.eager_step import EagerDecodeStep
from mlcore.inference.sampling import (
    is_greedy,
    make_generator,
    presence_mask,
    process_logits,
    sample_next,
    validate_sampling_args,
)

Streamer = Callable[[Tensor], Any]


def check_prompt(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None,
                 max_new_tokens: int, *, mask_name: str = "attention_mask") -> Tensor:
    """Validate a generation request once; return the (B, T) 0/1 mask (all ones when none was given).
    ``mask_name``: what the errors call the mask (one read from the pad id is not the caller's attention_mask)."""
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int):
        seen = f"{tuple(input_ids.shape)} {input_ids.dtype}" if isinstance(input_ids, Tensor) else repr(input_ids)
        raise ValueError(f"input_ids must be an integer (B, T) tensor, got {seen}")
    B, T = input_ids.shape
    if B == 0 or T == 0:
        raise ValueError(f"input_ids must hold at least one row and one token (an empty prompt has nothing to "
                         f"continue), got shape {(B, T)}")
    if not isinstance(max_new_tokens, Integral) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")  # numpy ints too
    if int(input_ids.min()) < 0:  # checked here because the repetition penalty reads the ids before the model
        raise ValueError(f"input_ids must be token ids >= 0, got {int(input_ids.min())}")
    if attention_mask is None:
        return torch.ones_like(input_ids)
    if not isinstance(attention_mask, Tensor) or tuple(attention_mask.shape) != (B, T):
        seen = tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else repr(attention_mask)
        raise ValueError(f"attention_mask must match input_ids' shape {(B, T)}, got {seen}")
    if bool(((attention_mask != 0) & (attention_mask != 1)).any()):
        raise ValueError("attention_mask must hold only 0 (pad) and 1 (token)")
    if bool((attention_mask.sum(dim=1) == 0).any()):
        raise ValueError(f"{mask_name} has a row with no token: every prompt needs at least one")
    if not bool(attention_mask[:, -1].all()):
        raise ValueError(f"{mask_name} must be left-padded (every row's last column a token), got a row "
                         "ending in padding")
    return attention_mask.to(input_ids.device).long()


def pad_token(pad_token_id: int | None, eos: Tensor | None, vocab: int, *, stops: bool = False) -> int:
    """The id a finished row is padded with: ``pad_token_id``, else the first EOS id, else 0 (as transformers).

    A first EOS id outside the vocabulary cannot pad a row that finished (the pad is fed back to the model, whose
    embedding would fail deep inside the next step): refused when a row can finish, by an in-vocabulary EOS id or
    by a ``stop`` sequence (``stops``)."""
    if pad_token_id is None:
        if eos is None:
            return 0
        first = int(eos[0])
        if first >= vocab and (stops or bool((eos < vocab).any())):
            raise ValueError(f"eos_token_id[0]={first} is outside the vocabulary (vocab_size={vocab}), so it cannot "
                             "pad the rows that finish (pad_token_id defaults to the first EOS id); pass "
                             "pad_token_id, or list an in-vocabulary EOS id first")
        return first
    if not isinstance(pad_token_id, Integral) or isinstance(pad_token_id, bool) or not 0 <= pad_token_id < vocab:
        raise ValueError(f"pad_token_id must be an int in [0, vocab_size={vocab}), got {pad_token_id!r}")
    return int(pad_token_id)  # numpy integers too, as for eos_token_id


def _eos_tensor(eos_token_id: int | Sequence[int] | Tensor | None, device: torch.device) -> Tensor | None:
    if eos_token_id is None:
        return None
    if isinstance(eos_token_id, Tensor) and not eos_token_id.is_floating_point() and eos_token_id.dim() <= 1:
        eos_token_id = eos_token_id.tolist()  # transformers accepts a tensor of ids too
    elif not isinstance(eos_token_id, (Tensor, Integral, Sequence, set)) and getattr(eos_token_id, "ndim", 2) <= 1:
        eos_token_id = eos_token_id.tolist()  # a numpy array of ids (its floats are refused below)
    ids = [eos_token_id] if isinstance(eos_token_id, Integral) else eos_token_id
    if isinstance(ids, (Sequence, set)) and not isinstance(ids, (str, bytes)) and len(ids) == 0:
        return None  # no EOS id, as transformers reads eos_token_id=[] (a tokenizer may list none)
    if not isinstance(ids, (Sequence, set)) or isinstance(ids, str) or not all(
            isinstance(i, Integral) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ValueError(f"eos_token_id must be an int >= 0 or a list of them, got {eos_token_id!r}")
    return torch.tensor([int(i) for i in ids], device=device)  # numpy integers too, as transformers takes them


def mask_from_padding(input_ids: Tensor, pad_token_id: Any, eos_token_id: Any) -> Tensor | None:
    """transformers' mask when none is given: ``input_ids != pad_token_id`` if the pad id occurs in the prompt
    and is no EOS id (then a pad cannot be told from an EOS), else None (every column a token)."""
    if (not isinstance(input_ids, Tensor) or not isinstance(pad_token_id, Integral)
            or isinstance(pad_token_id, bool)):
        return None
    eos = _eos_tensor(eos_token_id, torch.device("cpu"))
    if eos is not None and int(pad_token_id) in eos.tolist():
        return None
    padding = input_ids == int(pad_token_id)
    return (~padding).long() if bool(padding.any()) else None


def prompt_mask(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None, pad_token_id: Any,
                eos_token_id: Any, max_new_tokens: int) -> Tensor:
    """:func:`check_prompt` of the given mask, or of the one :func:`mask_from_padding` reads from ``pad_token_id``
    when none is given; a refused inferred mask is blamed on the pad id, not on an attention_mask never passed."""
    if attention_mask is not None:
        return check_prompt(model, input_ids, attention_mask, max_new_tokens)
    return check_prompt(model, input_ids, mask_from_padding(input_ids, pad_token_id, eos_token_id), max_new_tokens,
                        mask_name=f"no attention_mask was given, so pad_token_id={pad_token_id!r} in input_ids marks "
                                  "padding (as in transformers; pass attention_mask, 1 = token, to say otherwise), "
                                  "and that mask")


def check_language_model(name: str, model: Any) -> None:
    """ValueError naming ``name`` unless ``model`` is an mlcore language model (a module with a ``config`` that
    has a ``vocab_size``), e.g. an ``nn.Linear`` or a transformers model passed by mistake."""
    if not isinstance(model, nn.Module) or not hasattr(getattr(model, "config", None), "vocab_size"):
        raise ValueError(f"{name} must be an mlcore Transformer (a language model with a config), got "
                         f"{type(model).__name__}; for a transformers model use mlcore.inference.hf_generate")


def _check_streamer(streamer: Any) -> None:
    if isinstance(streamer, type):  # TextStreamer, not TextStreamer(tokenizer): put() would miss its argument
        raise ValueError(f"streamer must be a streamer object, got the class {streamer.__name__}; pass an instance "
                         f"(e.g. {streamer.__name__}(tokenizer))")
    if streamer is not None and not hasattr(streamer, "put") and not callable(streamer):
        raise ValueError(f"streamer must be None, a callable taking each step's tokens (B,) or an object with "
                         f"put() / end() (transformers' streamer), got {type(streamer).__name__}")


def _stop_sequences(stop: Sequence[Sequence[int]] | None) -> list[list[int]]:
    if stop is None:
        return []
    if isinstance(stop, (str, bytes)) or not hasattr(stop, "__iter__"):  # stop=13 raised "int is not iterable"
        raise ValueError(f"stop must be a list of non-empty token-id lists, e.g. [[13, 13]], got {stop!r}")
    seqs = [list(s) if isinstance(s, Sequence) and not isinstance(s, str) else None for s in stop]
    if not all(s and all(isinstance(i, Integral) and not isinstance(i, bool) and i >= 0 for i in s) for s in seqs):
        raise ValueError(f"stop must be a list of non-empty token-id lists, e.g. [[13, 13]], got {stop!r}")
    return [[int(i) for i in s] for s in seqs]


def _hit_stop(tokens: list[list[int]], stops: list[list[int]]) -> list[bool]:
    return [any(len(row) >= len(s) and row[-len(s):] == s for s in stops) for row in tokens]


def _emit(streamer: Streamer | Any | None, tokens: Tensor) -> None:
    if streamer is None:
        return
    if hasattr(streamer, "put"):  # transformers' BaseStreamer interface
        streamer.put(tokens.cpu())
    else:
        streamer(tokens)


@torch.no_grad()
def generate(
    model: nn.Module,
    input_ids: Tensor,
    *,
    max_new_tokens: int,
    attention_mask: Tensor | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    stop: Sequence[Sequence[int]] | None = None,
    cache: str | Any = "static",
    seed: int | None = None,
    streamer: Streamer | Any | None = None,
    compile: bool | str = False,
) -> Tensor:
    """Continue left-padded prompts ``input_ids`` (B, T); return (B, T + n) with n <= ``max_new_tokens``.

    temperature: 0 = greedy (argmax), as is any temperature below ``GREEDY_BELOW`` = 1e-5 (vLLM's rule; a tiny
        T overflows ``logits / T`` in float32, and greedy is the T -> 0 limit); above it samples from
        ``softmax(logits / temperature)`` after ``top_k`` /
        ``top_p`` (nucleus) filtering; ``repetition_penalty`` as transformers defines it (CTRL, Keskar et al.
        2019). Draws use a local ``torch.Generator`` seeded with ``seed`` (the global RNG is never touched).
    eos_token_id / stop: a row finishes at one of these ids (an int, a list, a tensor; an empty list means none,
        as in transformers) or once its output ends with a ``stop`` token-id sequence: the generated tokens only
        (OpenAI's and vLLM's rule for stop strings), so a sequence that starts inside the prompt never matches,
        where transformers' ``StopStringCriteria`` would match it across the boundary. Later positions hold
        ``pad_token_id`` (default: the first EOS id, else 0). Generation ends early when every row has finished,
        as transformers' does.
    cache: "dynamic" | "static" | "paged" | "sliding" | "int8", or a cache object (mlcore's KVCache protocol)
        that is empty (it is filled from the prompt on; a preallocated one needs prompt + max_new_tokens - 1
        columns: the last new token is never fed back).
    streamer: called with each step's new tokens (B,); a transformers streamer (``put`` / ``end``) gets what
        transformers' ``generate`` gives it: ``put(prompt)`` first (TextStreamer's ``skip_prompt`` drops it),
        then ``put(tokens)`` per step and ``end()``.
    compile: False (eager), True, or a ``torch.compile`` mode: the prompt is prefilled eagerly, then every decode
        step runs as one compiled graph over a StaticCache (True = "reduce-overhead", i.e. CUDA graphs, on CUDA;
        "default" elsewhere, with the weights frozen into the graph). Needs ``cache="static"`` and a model in
        eval mode; the graph is compiled on the first call (seconds to minutes) and reused by later calls of the
        same model, batch size and (bucketed) length, or compiled again when the weights changed. See
        :mod:`mlcore.inference.compiled`.
    """
    check_language_model("model", model)
    # as transformers, without an attention_mask a pad id found in the prompt marks padding
    mask = prompt_mask(model, input_ids, attention_mask, pad_token_id, eos_token_id, max_new_tokens)
    max_new_tokens = int(max_new_tokens)  # a numpy integer would leak into the caches' sizes
    validate_sampling_args(temperature, top_k, top_p, repetition_penalty)
    eos = _eos_tensor(eos_token_id, input_ids.device)
    stops = _stop_sequences(stop)
    pad_token_id = pad_token(pad_token_id, eos, model.config.vocab_size, stops=bool(stops))
    _check_streamer(streamer)
    if seed is not None:
        make_generator(seed)  # a bad seed is named even when greedy decoding never draws
    B, T = input_ids.shape
    mode = None if compile is False else _compile_mode(compile, cache, model, input_ids.device)
    if max_new_tokens == 0:
        if hasattr(streamer, "put"):  # the promised put(prompt) / end(): a TextIteratorStreamer's reader would hang
            streamer.put(input_ids.cpu())
        if hasattr(streamer, "end"):
            streamer.end()
        return input_ids.to(torch.long, copy=True)  # int64 as every longer output (an int32 prompt too)
    decoder = None
    if mode is None:
        # the last new token is never fed back: T + max_new_tokens - 1 columns (and positions) are ever cached
        kv = make_cache(cache, model, batch=B, max_len=T + max_new_tokens - 1, device=input_ids.device)
    else:
        from mlcore.inference.compiled import decoder_for

        decoder = decoder_for(model, batch=B, needed=T + max_new_tokens - 1, mode=mode)  # columns, as above
        kv = decoder.start()
    greedy = is_greedy(temperature)  # 0, or so small that logits / T would overflow: the T -> 0 limit
    generator = None if greedy else make_generator(seed, input_ids.device)
    vocab = model.config.vocab_size
    penalise = repetition_penalty is not None and repetition_penalty != 1.0
    # transformers 5.x leaves each row's leading padding out of the penalty (prompt_ignore_length = the index of
    # its first token), so a 0 inside a row's mask is still penalised: the running max of the mask says that
    present = presence_mask(input_ids, vocab, mask.cummax(dim=1).values) if penalise else None

    if hasattr(streamer, "put"):
        streamer.put(input_ids.cpu())  # as transformers does: the prompt first
    # Without padding the positions are the columns, which the model derives from the cache length alone: no
    # mask and no position_ids per step (and its RoPE rows come from a table made once, not per step).
    padded = not bool(mask.all())
    logits = model(input_ids, attention_mask=mask if padded else None, cache=kv, logits_to_keep=1)  # (B, 1, V)
    positions = mask.sum(dim=1, keepdim=True) - 1 if padded else None  # (B, 1) each row's last prompt position
    if decoder is not None:
        if positions is None:  # the compiled step always takes positions as a tensor (no per-step Python int)
            positions = torch.full((B, 1), T - 1, dtype=torch.long, device=input_ids.device)
        run_step = functools.partial(decoder.step, validate=False)  # ids and positions in range by construction
    elif (lean := EagerDecodeStep.for_generation(model, kv, padded=padded)) is not None:
        def run_step(token: Tensor, positions: Tensor | None) -> Tensor:
            return lean(token)  # the forward's ops for one token, decided once (inference/eager_step.py)
    else:
        def run_step(token: Tensor, positions: Tensor | None) -> Tensor:
            return model(token, cache=kv, position_ids=positions, logits_to_keep=1, validate=False)
    if greedy and present is None and eos is None and not stops and streamer is None:
        return _greedy_loop(run_step, input_ids, logits, positions, max_new_tokens)
    logits = logits[:, -1]  # (B, V)
    unfinished = torch.ones(B, dtype=torch.bool, device=input_ids.device)
    out = [input_ids]
    history: list[list[int]] = [[] for _ in range(B)] if stops else []
    for step in range(max_new_tokens):
        if greedy and present is None:  # plain greedy: what process_logits + sample_next would do, minus checks
            token = logits.argmax(dim=-1)  # (B,)
        else:
            # greedy (temperature below GREEDY_BELOW) keeps only the penalty, as transformers' do_sample=False: a
            # tiny temperature must not divide the logits (1e-40 made every positive logit +inf, and the argmax
            # of a row of infs is its first one, not its largest logit)
            scores = process_logits(logits, temperature=0.0 if greedy else temperature, top_k=top_k, top_p=top_p,
                                    repetition_penalty=repetition_penalty, present=present)
            token = sample_next(scores, generator=generator, greedy=greedy)  # (B,)
        if eos is not None or stops:  # without them no row ever finishes early: nothing to pad
            token = torch.where(unfinished, token, torch.full_like(token, pad_token_id))
        out.append(token[:, None])
        _emit(streamer, token)
        if present is not None:
            present.scatter_(1, token[:, None].clamp(max=vocab - 1), True)
        if eos is not None:
            unfinished &= ~torch.isin(token, eos)
        if stops:
            for row, t in zip(history, token.tolist()):
                row.append(t)
            unfinished &= ~torch.tensor(_hit_stop(history, stops), device=token.device)
        if (eos is not None or stops) and not bool(unfinished.any()):
            break
        if step == max_new_tokens - 1:
            break
        if positions is not None:
            positions = positions + 1
        logits = run_step(token[:, None], positions)[:, -1]
    if hasattr(streamer, "end"):
        streamer.end()
    return torch.cat(out, dim=1)


def _compile_mode(compile: bool | str, cache: str | Any, model: nn.Module, device: torch.device) -> str:
    """The torch.compile mode ``generate(compile=...)`` asks for, after checking the request is supported."""
    from mlcore.inference.compile_options import check_compilable, resolve_mode

    mode = resolve_mode(compile, device)
    if not (isinstance(cache, str) and cache == "static"):
        shown = f"cache={cache!r}" if isinstance(cache, str) else f"a {type(cache).__name__} object"
        raise ValueError(f"compile needs cache='static' (the compiled step writes a StaticCache it owns), got "
                         f"{shown}; use compile=False for other caches")
    check_compilable(model)
    return mode


def _greedy_loop(run_step: Callable[[Tensor, Tensor | None], Tensor], input_ids: Tensor, logits: Tensor,
                 positions: Tensor | None, max_new_tokens: int) -> Tensor:
    """Plain greedy decoding (no penalty, EOS, stop or streamer): per token an argmax and one model step.

    ``logits`` (B, 1, V) from the prefill; the argmax over V keeps the (B, 1) shape the next step takes.
    ``run_step(token (B, 1), positions)`` runs the model on the cache (eagerly, or the compiled step)."""
    out = [input_ids]
    for step in range(max_new_tokens):
        token = logits.argmax(dim=-1)  # (B, 1)
        out.append(token)
        if step == max_new_tokens - 1:
            break
        if positions is not None:
            positions = positions + 1
        logits = run_step(token, positions)
    return torch.cat(out, dim=1)


@torch.no_grad()
def generate_no_cache(model: nn.Module, input_ids: Tensor, *, max_new_tokens: int,
                      attention_mask: Tensor | None = None) -> Tensor:
    """Greedy decoding that re-runs the whole sequence every step (no KV cache): the O(t^2)-per-token baseline."""
    mask = check_prompt(model, input_ids, attention_mask, max_new_tokens)
    ids = input_ids
    for _ in range(max_new_tokens):
        logits = model(ids, attention_mask=mask, logits_to_keep=1, validate=False)[:, -1]
        token = logits.argmax(dim=-1, keepdim=True)
        ids = torch.cat([ids, token], dim=1)
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)
    return ids
