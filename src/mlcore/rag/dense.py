"""Exact nearest-neighbour search by cosine similarity, in torch.

With unit-length rows (``Embedder`` returns them), cosine similarity is a dot product, so the whole search is
one matrix product and a top-k:

    S = Q E^T                   Q (B, D) queries, E (N, D) corpus  ->  S (B, N)
    top-k of each row of S      ->  scores (B, k), indices (B, k)

Exact and O(N D) per query: the reference an approximate index (``approx.py``) is measured against.
The index persists as safetensors + a JSON manifest naming the embedder (``persist.py``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def check_vectors(x: Any, name: str, dim: int | None = None) -> Tensor:
    """``x`` as a finite float32 ``(N, D)`` tensor, or a ValueError naming ``name``, what was seen and wanted."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (N, D), got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] == 0:
        raise ValueError(f"{name} must have shape (N, D) with D >= 1, got {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has dimension {x.shape[1]}, the index expects {dim}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} holds NaN or inf values; embeddings must be finite")
    return x.float()


class DenseIndex:
    """Exact cosine index over ``embeddings (N, D)`` (normalised here), with optional ``texts`` and the
    ``embedder`` identity (``Embedder.identity``) that made them."""

    def __init__(self, embeddings: Tensor, *, texts: Sequence[str] | None = None,
                 embedder: dict[str, Any] | None = None, device: str | torch.device = "cpu") -> None:
        emb = check_vectors(embeddings, "embeddings")
        if emb.shape[0] == 0:
            raise ValueError("embeddings is empty (0 rows): an index needs at least one document")
        if isinstance(texts, str):  # a str is a sequence too: its characters would become the texts
            raise ValueError("texts must be a list of str (one per row), got a single str")
        if texts is not None and len(texts) != emb.shape[0]:
            raise ValueError(f"texts has {len(texts)} entries but embeddings has {emb.shape[0]} rows")
        if texts is not None and not all(isinstance(t, str) for t in texts):
            bad = next(t for t in texts if not isinstance(t, str))
            raise ValueError(f"texts must hold str (one per row), got a {type(bad).__name__}: {bad!r}")
        if embedder is not None and not isinstance(embedder, dict):
            raise ValueError(f"embedder must be an identity dict (Embedder.identity) or None, got "
                             f"{type(embedder).__name__}")
        if embedder is not None and embedder.get("dim", emb.shape[1]) != emb.shape[1]:
            raise ValueError(f"embedder dim {embedder['dim']!r} does not match embeddings dimension {emb.shape[1]}")
        self.embeddings = torch.nn.functional.normalize(emb, dim=-1).to(device)
        self.texts = list(texts) if texts is not None else None
        self.embedder = dict(embedder) if embedder is not None else None

    @classmethod
    def build(cls, texts: Sequence[str], embedder: Any, *, device: str | torch.device = "cpu") -> DenseIndex:
        """Embed ``texts`` with ``embedder`` (an :class:`~mlcore.rag.Embedder`) and index them."""
        if isinstance(texts, str) or len(texts) == 0:
            raise ValueError("texts must be a non-empty list of str: an empty corpus has nothing to index")
        return cls(embedder.encode(texts), texts=texts, embedder=embedder.identity, device=device)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def search(self, queries: Tensor, k: int = 10) -> tuple[Tensor, Tensor]:
        """``queries (B, D)`` -> ``(scores (B, k'), indices (B, k'))``, best first, ``k' = min(k, N)``."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        q = check_vectors(queries, "queries", self.dim).to(self.embeddings.device)
        q = torch.nn.functional.normalize(q, dim=-1)
        scores = q @ self.embeddings.T  # (B, N)
        top = torch.sort(scores, dim=-1, descending=True, stable=True)  # equal scores (duplicates): lower id first
        return top.values[:, :k].cpu(), top.indices[:, :k].cpu()  # (B, k')

    def save(self, folder: str | os.PathLike) -> None:
        """``folder/index.safetensors`` + ``folder/manifest.json`` (embedder, dim, count, texts)."""
        from mlcore.rag.persist import save_index

        save_index(folder, {"embeddings": self.embeddings}, kind="DenseIndex", embedder=self.embedder,
                   dim=self.dim, texts=self.texts)

    @classmethod
    def load(cls, folder: str | os.PathLike, *, embedder: Any, device: str | torch.device = "cpu") -> DenseIndex:
        """Read an index saved by :meth:`save`; refuses one built by another embedder or of another dimension.

        ``embedder``: the :class:`~mlcore.rag.Embedder` (or its ``identity`` dict) the queries will come from.
        """
        from mlcore.rag.persist import load_index

        tensors, manifest = load_index(folder, kind="DenseIndex", embedder=embedder)
        return cls(tensors["embeddings"], texts=manifest.get("texts"), embedder=manifest["embedder"],
                   device=device)
