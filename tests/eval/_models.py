"""Tiny seeded models shared by the eval tests (a transformers Llama and its mlcore conversion)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mlcore.model import Transformer

BASE = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)


def tiny_llama(max_position_embeddings: int = 64, **rope: object) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(**BASE, max_position_embeddings=max_position_embeddings,
                      **({"rope_parameters": {**rope, "rope_theta": 10000.0}} if rope else {}))
    return LlamaForCausalLM(cfg).eval()


def tiny_pair(max_position_embeddings: int = 64) -> tuple[LlamaForCausalLM, Transformer]:
    hf = tiny_llama(max_position_embeddings)
    return hf, Transformer.from_hf(hf).eval()


def random_ids(n: int, *, rows: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, BASE["vocab_size"], (rows, n), generator=torch.Generator().manual_seed(seed))
