"""Shared pieces of the generation tests: tiny HF models with their mlcore twins, the cache kinds present."""

from __future__ import annotations

import functools
import importlib.util
import re

import torch

from mlcore.model import Transformer

from ..model._model_testutils import gpt2, left_padded_batch, llama_family

# Every cache kind of mlcore.inference whose module exists (the optional kinds land in their own files).
_MODULES = {"paged": "paged_cache", "sliding": "sliding_cache", "int8": "quantized_cache"}
CACHE_KINDS = ["dynamic", "static"] + [
    kind for kind, mod in _MODULES.items() if importlib.util.find_spec(f"mlcore.inference.{mod}") is not None
]
EXACT_KINDS = [k for k in CACHE_KINDS if k != "int8"]  # int8 rounds the cached keys / values

# Mistral's window (5) is shorter than prompt (9) + output (12): the sliding mask matters in every step.
ARCHS = {
    "llama": lambda: llama_family("llama"),
    "mistral": lambda: llama_family("mistral", sliding_window=5),
    "gpt2": lambda: gpt2(),
}
PROMPT_LEN = 9
NEW = 12


@functools.cache
def pair(arch: str) -> tuple[torch.nn.Module, Transformer]:
    """(transformers model, mlcore Transformer) with the same weights, both in eval mode."""
    hf = ARCHS[arch]()
    return hf, Transformer.from_hf(hf).eval()


def batch(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """'single': one unpadded prompt; 'padded': three left-padded prompts of 4, 9 and 6 tokens."""
    lengths = [PROMPT_LEN] if kind == "single" else [4, PROMPT_LEN, 6]
    return left_padded_batch(lengths, PROMPT_LEN)


def stepwise_logits(model: Transformer, ids: torch.Tensor, mask: torch.Tensor, cache) -> torch.Tensor:
    """Logits (B, n, V) of a cached prefill of the prompt, then one decode step per later column, called
    exactly as ``generate`` calls the model (positions passed, ``validate=False``, ``logits_to_keep=1``)."""
    T = mask.shape[1]
    with torch.no_grad():
        steps = [model(ids[:, :T], attention_mask=mask, cache=cache, logits_to_keep=1)]
        positions = mask.sum(dim=1, keepdim=True) - 1
        for t in range(T, ids.shape[1]):
            positions = positions + 1
            steps.append(model(ids[:, t:t + 1], cache=cache, position_ids=positions, logits_to_keep=1,
                               validate=False))
    return torch.cat(steps, dim=1)


def full_logits(model: Transformer, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The same logits (B, n, V) from ONE forward over the whole sequence without a cache (the reference)."""
    T = mask.shape[1]
    full_mask = torch.cat([mask, torch.ones(mask.shape[0], ids.shape[1] - T, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        return model(ids, attention_mask=full_mask)[:, T - 1:]


# a library matmul call of a linear layer in a compiled graph's generated code (bmm, attention over the cache, is
# in every step and not matched)
_LIBRARY_MATMUL = re.compile(r"\b\w*?(?<!b)(?:mm|addmm|_mkl_linear|_linear_pointwise|int8pack_mm|linear)(?:_out)?\s*\(")


def library_matmuls(sources: list[str]) -> set[str]:
    """The library matmul calls of linear layers in ``sources`` (``run_and_get_code``'s generated code); inductor's
    own kernels (``cpp_fused_*``, e.g. a GEMM template's ``..._micro_gemm``) are not library calls."""
    return {c for src in sources for c in _LIBRARY_MATMUL.findall(src) if not c.startswith("cpp_fused")}
