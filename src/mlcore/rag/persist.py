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


def _read_manifest(folder: Path, kind: str) -> dict[str, Any]:
    """``folder/manifest.json``, checked field by field: a hand-edited or truncated manifest is refused by name
    here instead of failing later as a KeyError / AttributeError (or loading texts that are not str)."""
    path = folder / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a readable JSON manifest: {err}") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT or manifest.get("kind") != kind:
        raise ValueError(f"{path} is format {manifest.get('format')!r} kind {manifest.get('kind')!r}, "
                         f"expected {FORMAT!r} kind {kind!r}")
    for key in ("count", "dim"):
        value = manifest.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{path}: {key!r} must be a positive int, got {value!r}")
    have = manifest.get("embedder")
    if not isinstance(have, dict) or have.get("dim", manifest["dim"]) != manifest["dim"]:
        raise ValueError(f"{path}: 'embedder' must be the identity dict of the embedder (name, dim = "
                         f"{manifest['dim']}, fingerprint), got {have!r}")
    texts = manifest.get("texts")
    if texts is not None and (not isinstance(texts, list) or len(texts) != manifest["count"]
                              or not all(isinstance(t, str) for t in texts)):
        raise ValueError(f"{path}: 'texts' must be null or a list of {manifest['count']} str (one per vector), got "
                         f"{type(texts).__name__}" + (f" of {len(texts)}" if isinstance(texts, list) else ""))
    return manifest


def load_index(folder: str | os.PathLike, *, kind: str, embedder: Any,
               names: tuple[str, ...] = ("embeddings",)) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(tensors, manifest)`` of the index in ``folder``, after checking it against ``embedder``
    (an ``Embedder`` or its ``identity`` dict); the file must hold exactly the tensors ``names``, each
    ``(count, dim)``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "manifest.json").is_file() or not (folder / "index.safetensors").is_file():
        raise ValueError(f"folder {str(folder)!r} holds no saved index (manifest.json + index.safetensors)")
    manifest = _read_manifest(folder, kind)
    want = embedder if isinstance(embedder, dict) else getattr(embedder, "identity", None)
    if not isinstance(want, dict) or isinstance(want.get("dim"), bool) or not isinstance(want.get("dim"), int):
        raise ValueError(f"embedder must be an Embedder or its identity dict (with an int 'dim'), got "
                         f"{want if isinstance(want, dict) else type(embedder).__name__!r}")
    have = manifest["embedder"]
    if want["dim"] != manifest["dim"]:
        raise ValueError(f"index in {folder} has dimension {manifest['dim']} (embedder {have.get('name')!r}) but "
                         f"the query embedder {want.get('name')!r} produces dimension {want['dim']}")
    if have.get("name") != want.get("name") or have.get("fingerprint") != want.get("fingerprint"):
        raise ValueError(f"index in {folder} was built with embedder {have.get('name')!r} "
                         f"(fingerprint {have.get('fingerprint')}), not with {want.get('name')!r} "
                         f"(fingerprint {want.get('fingerprint')}); rebuild the index with the query embedder")
    try:
        tensors = load_file(str(folder / "index.safetensors"))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{folder}/index.safetensors is not a readable safetensors file: {err}") from None
    if sorted(tensors) != sorted(names):
        raise ValueError(f"{folder}/index.safetensors holds tensors {sorted(tensors)}, expected {sorted(names)}")
    for name, t in tensors.items():
        if tuple(t.shape) != (manifest["count"], manifest["dim"]):
            raise ValueError(f"{folder}/index.safetensors: {name!r} has shape {tuple(t.shape)}, the manifest says "
                             f"{(manifest['count'], manifest['dim'])}")
    return tensors, manifest
