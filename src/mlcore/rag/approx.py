"""Approximate nearest-neighbour search with HNSW (Malkov & Yashunin 2018) from ``faiss-cpu``.

HNSW builds a layered proximity graph: each vector links to ``M`` neighbours per layer, found while inserting
with a beam of ``ef_construction``; a query walks greedily down the layers keeping a beam of ``ef_search``
candidates. Cost per query grows roughly with ``log N`` instead of ``N``, at the price of sometimes missing a
true neighbour. That loss is measured, not assumed:

    recall@k = |approx top-k ∩ exact top-k| / k        averaged over queries   (:func:`recall_vs_exact`)

Vectors are unit length, so faiss' inner-product metric is cosine similarity, as in ``DenseIndex``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mlcore.rag.dense import check_vectors


class ApproxIndex:
    """HNSW over ``embeddings (N, D)`` (inner product on normalised rows = cosine)."""

    def __init__(self, embeddings: Tensor, *, M: int = 32, ef_construction: int = 100,
                 ef_search: int = 128) -> None:
        import faiss

        emb = check_vectors(embeddings, "embeddings")
        if emb.shape[0] == 0:
            raise ValueError("embeddings is empty (0 rows): an index needs at least one document")
        for name, v in (("M", M), ("ef_construction", ef_construction), ("ef_search", ef_search)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.dim, self.count = int(emb.shape[1]), int(emb.shape[0])
        self.index = faiss.IndexHNSWFlat(self.dim, M, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction
        self.index.hnsw.efSearch = ef_search
        self.index.add(np.ascontiguousarray(torch.nn.functional.normalize(emb, dim=-1).numpy()))

    def __len__(self) -> int:
        return self.count

    def search(self, queries: Tensor, k: int = 10) -> tuple[Tensor, Tensor]:
        """``queries (B, D)`` -> ``(scores (B, k'), indices (B, k'))``, best first, ``k' = min(k, N)``."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        q = torch.nn.functional.normalize(check_vectors(queries, "queries", self.dim).cpu(), dim=-1)
        scores, ids = self.index.search(np.ascontiguousarray(q.numpy()), min(k, self.count))
        scores, ids = torch.from_numpy(scores), torch.from_numpy(ids).long()
        if bool((ids < 0).any()):
            scores, ids = self._fill_unreached(q, scores, ids)
        return scores, ids

    def _fill_unreached(self, q: Tensor, scores: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Replace faiss' ``-1`` placeholders (slots the graph walk never reached, common when ``k`` nears
        ``N``) with the best documents the row is missing, scored exactly, so every row holds ``k'`` real ids."""
        vectors = torch.from_numpy(self.index.reconstruct_n(0, self.count))  # (N, D), unit rows
        for row in torch.nonzero((ids < 0).any(dim=1)).flatten().tolist():
            found = ids[row][ids[row] >= 0]
            exact = vectors @ q[row]
            exact[found] = float("-inf")  # only documents the walk did not return
            extra = exact.topk(int((ids[row] < 0).sum())).indices
            merged_ids = torch.cat([found, extra])
            merged = torch.cat([scores[row][ids[row] >= 0], exact[extra]])
            order = merged.argsort(descending=True, stable=True)
            scores[row], ids[row] = merged[order], merged_ids[order]
        return scores, ids


def recall_vs_exact(approx_ids: Tensor, exact_ids: Tensor) -> float:
    """Mean over queries of ``|approx ∩ exact| / k`` for ``(B, k)`` index tensors of the same shape."""
    if approx_ids.shape != exact_ids.shape or approx_ids.dim() != 2 or exact_ids.numel() == 0:
        raise ValueError(f"approx_ids and exact_ids must both be (B, k) with B, k >= 1, got "
                         f"{tuple(approx_ids.shape)} and {tuple(exact_ids.shape)}")
    hits = [len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx_ids, exact_ids)]
    return sum(hits) / exact_ids.numel()
