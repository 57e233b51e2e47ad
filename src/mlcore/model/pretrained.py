"""Reading and writing Hugging Face model folders, offline, with safetensors only.

A folder holds ``config.json`` and either ``model.safetensors`` or ``model.safetensors.index.json`` with shards
(``{"weight_map": {tensor name: shard file}}``). Pickled ``pytorch_model.bin`` files are refused: unpickling can
run code, and safetensors is a plain header + raw bytes format (https://huggingface.co/docs/safetensors).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mlcore.model.hf_convert import (
    architecture_of,
    config_from_hf,
    config_to_hf,
    fold_query_scales,
    gpt2_query_scales,
    load_converted,
    state_dict_from_hf,
    state_dict_to_hf,
)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"could not read safetensors file {path}: {e} (corrupt or truncated?)") from e


def load_hf_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF folder (single file or sharded), by their HF names."""
    folder = Path(folder)
    single, index = folder / WEIGHTS_NAME, folder / INDEX_NAME
    if single.is_file():
        return _read_safetensors(single)
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index} is not a valid safetensors index (needs a 'weight_map'): {e}") from e
        sd: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                raise ValueError(f"{index} names shard {shard!r}, which is missing from {folder}")
            sd.update(_read_safetensors(folder / shard))
        missing = sorted(set(weight_map) - set(sd))
        if missing:
            raise ValueError(f"shards in {folder} lack tensors listed in the index: {missing[:8]}")
        return sd
    pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt*"))
    if pickles:
        raise ValueError(f"{folder} holds only pickled weights {pickles}; mlcore loads safetensors only "
                         f"({WEIGHTS_NAME} or {INDEX_NAME}). Convert them with a trusted tool first.")
    raise ValueError(f"no weights in {folder}: expected {WEIGHTS_NAME} or {INDEX_NAME}")


def from_pretrained(folder: str | Path, *, dtype: torch.dtype = torch.float32):
    """Build an mlcore ``Transformer`` from an HF folder (Llama, Mistral, Qwen2, GPT-2), fully offline, in eval
    mode with parameters of ``dtype`` (whatever dtype the file stores)."""
    from mlcore.model.transformer import Transformer

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"from_pretrained: {folder} is not a directory")
    cfg_path = folder / CONFIG_NAME
    if not cfg_path.is_file():
        raise ValueError(f"from_pretrained: {folder} has no {CONFIG_NAME}")
    try:
        d = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"from_pretrained: {cfg_path} is not valid JSON: {e}") from e
    config = config_from_hf(d)
    arch = architecture_of(d)
    model = Transformer(config).to(dtype)
    sd = fold_query_scales(state_dict_from_hf(load_hf_state_dict(folder), arch), gpt2_query_scales(d))
    load_converted(model, sd, source=str(folder))
    return model.eval()


def save_pretrained(model, folder: str | Path) -> None:
    """Write a Llama-family mlcore model as an HF folder: ``config.json`` + ``model.safetensors``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    d = config_to_hf(model.config)
    dtype = next(model.parameters()).dtype
    d["dtype"] = str(dtype).removeprefix("torch.")
    sd = {k: v.contiguous().cpu() for k, v in state_dict_to_hf(model).items()}
    save_file(sd, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    (folder / CONFIG_NAME).write_text(json.dumps(d, indent=2) + "\n")
