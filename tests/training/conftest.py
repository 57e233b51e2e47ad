"""A toy causal language model for the training-loop tests: embedding -> dropout -> GRU -> linear head.

Any ``nn.Module`` mapping ``(input_ids, attention_mask=...)`` to logits works with the loop; a GRU is causal
(position t sees tokens <= t), tiny, deterministic on the CPU, and able to memorize a fixed batch.
"""

import pytest
import torch
from torch import nn


class ToyLM(nn.Module):
    def __init__(self, vocab: int = 32, dim: int = 32, dropout: float = 0.0, tie: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.drop = nn.Dropout(dropout)
        self.rnn = nn.GRU(dim, dim, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        if tie:
            self.head.weight = self.embed.weight

    def forward(self, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        h, _ = self.rnn(self.drop(self.embed(input_ids)))   # (B, T, D)
        return self.head(self.norm(h))                      # (B, T, V)


@pytest.fixture
def toy_factory():
    def make(seed: int = 0, **kwargs) -> ToyLM:
        torch.manual_seed(seed)
        return ToyLM(**kwargs)

    return make


@pytest.fixture
def token_data():
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(0, 32, (24, 12), generator=g)}
