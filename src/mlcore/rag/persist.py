"""Index persistence: tensors in safetensors, and a JSON manifest that says which embedder made them.

    folder/index.safetensors   the vectors (no pickle: safe to load from anywhere)
    folder/manifest.json       {"format": "mlcore.rag/1", "kind": "DenseIndex", "count": N, "dim": D,
                                "embedder": {"name": ..., "dim": D, "fingerprint": ...}, "texts": [...]}

Vectors from two different embedders live in unrelated spaces: a query embedded by model B searched against
an index of model A returns nonsense with no error. So loading checks the manifest against the embedder the
caller will query with (name, dimension and weights fingerprint) and refuses a mismatch with a clear error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import Tensor

FORMAT = "mlcore.rag/1"


def save_index(folder: str | os.PathLike, tensors: dict[str, Tensor], *, kind: str,
               embedder: dict[str, Any] | None, dim: int, texts: list[str] | None = None) -> Path:
    """Write ``tensors`` and the manifest into ``folder`` (created); returns the folder."""
    from safetensors.torch import save_file

    if embedder is None:
        raise ValueError("the index has no embedder identity: build it with DenseIndex.build(texts, embedder) or "
                         "pass embedder=Embedder.identity, so a reader can check which model made the vectors")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(folder / "index.safetensors"))
    count = int(next(iter(tensors.values())).shape[0])
    manifest = {"format": FORMAT, "kind": kind, "count": count, "dim": int(dim), "embedder": embedder,
                "texts": texts}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return folder


def load_index(folder: str | os.PathLike, *, kind: str, embedder: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(tensors, manifest)`` of the index in ``folder``, after checking it against ``embedder``
    (an ``Embedder`` or its ``identity`` dict)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "manifest.json").exists() or not (folder / "index.safetensors").exists():
        raise ValueError(f"folder {str(folder)!r} holds no saved index (manifest.json + index.safetensors)")
    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest.get("format") != FORMAT or manifest.get("kind") != kind:
        raise ValueError(f"{folder}/manifest.json is format {manifest.get('format')!r} kind {manifest.get('kind')!r}, "
                         f"expected {FORMAT!r} kind {kind!r}")
    want = embedder if isinstance(embedder, dict) else getattr(embedder, "identity", None)
    if not isinstance(want, dict):
        raise ValueError(f"embedder must be an Embedder or its identity dict, got {type(embedder).__name__}")
    have = manifest["embedder"]
    if int(want["dim"]) != int(manifest["dim"]):
        raise ValueError(f"index in {folder} has dimension {manifest['dim']} (embedder {have.get('name')!r}) but "
                         f"the query embedder {want.get('name')!r} produces dimension {want['dim']}")
    if have.get("name") != want.get("name") or have.get("fingerprint") != want.get("fingerprint"):
        raise ValueError(f"index in {folder} was built with embedder {have.get('name')!r} "
                         f"(fingerprint {have.get('fingerprint')}), not with {want.get('name')!r} "
                         f"(fingerprint {want.get('fingerprint')}); rebuild the index with the query embedder")
    tensors = load_file(str(folder / "index.safetensors"))
    first = next(iter(tensors.values()))
    if tuple(first.shape) != (manifest["count"], manifest["dim"]):
        raise ValueError(f"{folder}/index.safetensors has shape {tuple(first.shape)}, the manifest says "
                         f"{(manifest['count'], manifest['dim'])}")
    return tensors, manifest
