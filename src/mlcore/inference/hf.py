"""The ecosystem twin of :mod:`mlcore.inference`: transformers' ``generate`` with the same knobs, side by side.

    from mlcore.inference import generate
    from mlcore.inference.hf import hf_generate, hf_assisted_generate

    generate(model, ids, max_new_tokens=32, cache="static")                      # from scratch
    hf_generate(model.to_hf(), ids, max_new_tokens=32, cache_implementation="static")   # transformers

``hf_generate`` builds one explicit ``GenerationConfig`` and lends the model a blank ``generation_config`` for the
call, so that nothing leaks in from the model's own generation config (transformers fills every field left unset
from it) or transformers' global defaults (``top_k=50``, the config's ``eos_token_id``): ``None``
means "off" here exactly as in mlcore's ``generate``. Greedy decoding (``temperature=0``, or below
``GREEDY_BELOW`` as in ``generate``) is ``do_sample=False``; ``cache_implementation`` picks transformers'
``DynamicCache`` or ``StaticCache``.

``hf_assisted_generate`` is transformers' assisted generation (its speculative decoding, Leviathan et al. 2023):
``generate(..., assistant_model=draft)`` with a constant number of draft tokens per round, the twin of
:func:`mlcore.inference.speculative.speculative_generate`. transformers supports it for one row only.

Sampling in transformers draws from the global torch RNG. With ``seed`` given, the call runs inside
``torch.random.fork_rng`` seeded with it, so the caller's global RNG state is the same afterwards (the
draws still differ from mlcore's local ``torch.Generator``: the two are reproducible, not identical).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from numbers import Integral
from typing import Any

import torch
from torch import Tensor, nn

from mlcore.inference.generate import _eos_tensor, mask_from_padding
from mlcore.inference.sampling import is_greedy, validate_sampling_args

__all__ = ["hf_generate", "hf_assisted_generate", "hf_generation_config"]

HF_CACHES = ("dynamic", "static")


def hf_generation_config(
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    cache_implementation: str = "dynamic",
):
    """A ``transformers.GenerationConfig`` meaning what mlcore's ``generate`` arguments mean (``None`` = off)."""
    from transformers import GenerationConfig

    validate_sampling_args(temperature, top_k, top_p, repetition_penalty)
    if not isinstance(max_new_tokens, Integral) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1 for transformers' generate, got {max_new_tokens!r}")
    if cache_implementation not in HF_CACHES:
        raise ValueError(f"cache_implementation must be one of {HF_CACHES}, got {cache_implementation!r}")
    # the ids generate takes (an int, a list, a tensor or numpy array of ints), checked as generate checks them
    eos_ids = _eos_tensor(eos_token_id, torch.device("cpu"))  # None for None and for an empty list
    eos = [] if eos_ids is None else eos_ids.tolist()
    if pad_token_id is None:
        pad_token_id = eos[0] if eos else 0
    sample = not is_greedy(temperature)  # as generate: below GREEDY_BELOW (1e-5) is argmax, not logits / T
    return GenerationConfig(
        max_new_tokens=int(max_new_tokens),
        do_sample=sample,
        # Greedy ignores the warpers (left unset: transformers warns about set-but-unused flags). When sampling,
        # top_k=0 switches its top-k off (its default is 50) and top_p=1.0 the nucleus filter.
        temperature=float(temperature) if sample else None,
        top_k=(top_k or 0) if sample else None,
        top_p=(top_p if top_p is not None else 1.0) if sample else None,
        repetition_penalty=1.0 if repetition_penalty is None else float(repetition_penalty),
        eos_token_id=eos,  # [] = no EOS (None would fall back to the model's generation_config)
        pad_token_id=pad_token_id,
        cache_implementation=cache_implementation,
    )


def _run(hf_model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None, config: Any, seed: int | None,
         **kwargs: Any) -> Tensor:
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.numel() == 0:
        seen = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else repr(input_ids)
        raise ValueError(f"input_ids must be a non-empty (B, T) integer tensor, got {seen}")
    if attention_mask is None:  # say so explicitly: transformers would guess padding from the default pad id
        attention_mask = torch.ones_like(input_ids)
    if tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"attention_mask must match input_ids' shape {tuple(input_ids.shape)}, "
                         f"got {tuple(attention_mask.shape)}")
    if seed is not None and (not isinstance(seed, Integral) or isinstance(seed, bool)):
        raise ValueError(f"seed must be None or an int, got {seed!r}")  # numpy integers too, as generate
    from transformers import GenerationConfig

    devices = [input_ids.device] if input_ids.device.type == "cuda" else []
    # transformers fills every field our config leaves None from the model's own generation_config (the checkpoint's
    # no_repeat_ngram_size, suppress_tokens, bad_words_ids, forced_eos_token_id, min_p, return_dict_in_generate,
    # ...): lend the model a blank one for the call, so that only what `config` says applies.
    own = hf_model.generation_config
    hf_model.generation_config = GenerationConfig()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices, enabled=config.do_sample):
            if config.do_sample and seed is not None:
                torch.manual_seed(int(seed))  # inside fork_rng: the caller's RNG state is restored on exit
            return hf_model.generate(input_ids, attention_mask=attention_mask, generation_config=config, **kwargs)
    finally:
        hf_model.generation_config = own


def hf_generate(
    hf_model: nn.Module,
    input_ids: Tensor,
    *,
    max_new_tokens: int,
    attention_mask: Tensor | None = None,
    cache_implementation: str = "dynamic",
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    seed: int | None = None,
    streamer: Any = None,
) -> Tensor:
    """transformers' ``hf_model.generate`` on left-padded ``input_ids`` (B, T); returns (B, T + n).

    Arguments mean what they mean in :func:`mlcore.inference.generate`; ``cache_implementation`` is
    ``"dynamic"`` (transformers' ``DynamicCache``) or ``"static"`` (its preallocated ``StaticCache``).
    ``streamer``: a transformers ``BaseStreamer`` (``put`` / ``end``).
    """
    config = hf_generation_config(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        repetition_penalty=repetition_penalty, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
        cache_implementation=cache_implementation,
    )
    if attention_mask is None:  # the caller's pad id marks padding as in mlcore's generate (not the default 0)
        attention_mask = mask_from_padding(input_ids, pad_token_id, eos_token_id)
    return _run(hf_model, input_ids, attention_mask, config, seed, streamer=streamer)


def hf_assisted_generate(
    hf_target: nn.Module,
    hf_draft: nn.Module,
    input_ids: Tensor,
    *,
    max_new_tokens: int,
    num_draft_tokens: int = 4,
    attention_mask: Tensor | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    seed: int | None = None,
) -> Tensor:
    """transformers' assisted generation: ``hf_target.generate(..., assistant_model=hf_draft)``; (1, T + n).

    The draft proposes ``num_draft_tokens`` per round (schedule "constant", no confidence early exit), as in
    :func:`mlcore.inference.speculative.speculative_generate`. transformers runs it for batch size 1 only.
    """
    if not isinstance(num_draft_tokens, Integral) or isinstance(num_draft_tokens, bool) or num_draft_tokens < 1:
        raise ValueError(f"num_draft_tokens must be an int >= 1, got {num_draft_tokens!r}")
    num_draft_tokens = int(num_draft_tokens)  # numpy integers too, as max_new_tokens (the caches take a Python int)
    if isinstance(input_ids, Tensor) and input_ids.dim() == 2 and input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must hold one row: transformers' assisted generation supports batch size 1, "
                         f"got {tuple(input_ids.shape)}")
    tv, dv = hf_target.config.vocab_size, hf_draft.config.vocab_size
    if tv != dv:
        raise ValueError(f"hf_draft has vocab_size={dv} but hf_target has vocab_size={tv}; they must be equal")
    config = hf_generation_config(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        eos_token_id=eos_token_id, pad_token_id=pad_token_id,
    )
    # transformers reads the draft length from the *assistant's* generation_config: lend it a copy for the call.
    own = hf_draft.generation_config
    lent = copy.deepcopy(own)
    lent.num_assistant_tokens = num_draft_tokens
    lent.num_assistant_tokens_schedule = "constant"
    lent.assistant_confidence_threshold = 0.0  # no early exit on a low-confidence draft token
    hf_draft.generation_config = lent
    if attention_mask is None:
        attention_mask = mask_from_padding(input_ids, pad_token_id, eos_token_id)
    try:
        return _run(hf_target, input_ids, attention_mask, config, seed, assistant_model=hf_draft)
    finally:
        hf_draft.generation_config = own
