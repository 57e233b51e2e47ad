"""Training checkpoints in safetensors: model weights, AdamW state, RNG state and step, never pickle.

A checkpoint is a folder ``step_000123/`` holding

- ``model.safetensors``: the model's ``state_dict`` (tensors that share storage, such as tied embeddings,
  are stored once; the aliases are listed in the metadata);
- ``training_state.safetensors``: the optimizer's per-parameter tensors flattened to names
  ``optim.<param index>.<name>`` (AdamW: ``step``, ``exp_avg``, ``exp_avg_sq``), the torch (and CUDA) RNG
  states as byte tensors ``rng.*``, and a JSON string in the safetensors metadata with the step, the
  optimizer's ``param_groups`` (hyper-parameters), any non-tensor state and caller extras.

safetensors holds only tensors and a string-to-string header, so loading cannot run code, which a pickled
``torch.save`` of ``optimizer.state_dict()`` could. Folders are written under a temporary name and renamed
when complete, so a run killed mid-write never leaves a half checkpoint that looks whole.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mlcore.quant.linear import FORMAT_KEY as QUANT_FORMAT_KEY
from mlcore.quant.tensor import metadata_from_tensor, metadata_mismatch

MODEL_FILE = "model.safetensors"
STATE_FILE = "training_state.safetensors"
META_KEY = "mlcore_checkpoint"


def _model_tensors(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict with shared tensors stored once: ``(tensors, aliases)``, ``aliases[dup] = kept``."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride(),
               tensor.dtype)  # a transposed view of a square weight is not the weight
        if tensor.numel() > 0 and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = tensor.detach().cpu().contiguous()
    return tensors, aliases


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten ``optimizer.state_dict()`` into named tensors and a JSON-ready remainder."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    try:
        groups = json.loads(json.dumps(sd["param_groups"]))
    except TypeError as err:
        raise ValueError(f"optimizer param_groups hold a value JSON cannot store: {err}") from err
    return tensors, {"param_groups": groups, "scalars": scalars}


def save_checkpoint(
    directory: str | Path,
    *,
    model: torch.nn.Module,
    step: int,
    optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder (see module doc) and return its path. ``extra`` must be JSON-serializable."""
    directory = Path(directory)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:  # load_checkpoint refuses such a step
        raise ValueError(f"save_checkpoint: step must be an int >= 0 (optimizer steps taken), got {step!r}")
    # everything that can fail (JSON metadata, optimizer flattening) runs before the first file is written,
    # so a bad ``extra`` leaves no half-written folder behind
    weights, aliases = _model_tensors(model)
    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    meta: dict[str, Any] = {"step": int(step), "extra": extra or {}, "optimizer": None}
    if optimizer is not None:
        optim_tensors, meta["optimizer"] = _optimizer_tensors(optimizer)
        tensors.update(optim_tensors)
    try:
        meta_json = json.dumps(meta)
    except (TypeError, ValueError) as err:
        raise ValueError(f"save_checkpoint: extra must be JSON-serializable: {err}") from err

    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(weights, str(tmp / MODEL_FILE), metadata={"format": "pt", "aliases": json.dumps(aliases)})
    save_file(tensors, str(tmp / STATE_FILE), metadata={"format": "pt", META_KEY: meta_json})

    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {str(path)!r} is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, RuntimeError) as err:
        raise ValueError(f"corrupt checkpoint file {str(path)!r}: {err}") from err


def load_checkpoint(
    directory: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` (and ``optimizer``), restore the
    RNG state, and return the metadata (``step``, ``extra``).

    Raises ``FileNotFoundError`` for a missing folder or file, ``ValueError`` for a corrupt file or a
    checkpoint whose tensor names or shapes do not fit ``model`` / ``optimizer``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint folder {str(directory)!r} does not exist")
    weights, wmeta = _read(directory / MODEL_FILE)
    state, smeta = _read(directory / STATE_FILE)
    try:
        aliases = json.loads(wmeta.get("aliases", "{}"))
        meta = json.loads(smeta[META_KEY])
    except (KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"corrupt checkpoint {str(directory)!r}: unreadable metadata ({err})") from err
    if (not isinstance(meta, dict) or not isinstance(meta.get("step"), int) or not isinstance(aliases, dict)
            or "rng.torch" not in state):
        raise ValueError(f"corrupt checkpoint {str(directory)!r}: metadata lacks the step, aliases or RNG state")
    # everything is checked before the model or optimizer is touched: a bad checkpoint leaves both as they were
    _check_meta(meta, state, directory)
    for dup, kept in aliases.items():
        if kept not in weights:
            raise ValueError(f"corrupt checkpoint {str(directory)!r}: {MODEL_FILE} aliases {dup!r} to "
                             f"{kept!r}, which it does not hold")
        weights[dup] = weights[kept]

    expected = model.state_dict()
    # a QuantizedLinear's format marker is checked by its own load_state_dict; checkpoints written before the
    # marker existed lack it and still load
    missing = sorted(k for k in set(expected) - set(weights) if not k.endswith("." + QUANT_FORMAT_KEY))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(v.shape)}"
             for k, v in expected.items() if k in weights and weights[k].shape != v.shape]
    # a quantized layer of another format (NF4 codes into an FP4 layer) is refused here, before any layer loads
    # (the rule QuantizedLinear's load_state_dict applies, checked for every layer first)
    for k in expected:
        if k.endswith("." + QUANT_FORMAT_KEY) and k in weights:
            diff = metadata_mismatch(metadata_from_tensor(weights[k], k), metadata_from_tensor(expected[k], k))
            if diff:
                wrong.append(f"{k}: another quantization format ({'; '.join(diff)})")
    if missing or unexpected or wrong:
        raise ValueError(f"checkpoint {str(directory)!r} is from another model shape: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, shape mismatches {wrong[:5]}")
    optim_state = _optimizer_state(optimizer, state, meta.get("optimizer"), directory) if optimizer else None
    model.load_state_dict(weights)
    if optimizer is not None:
        optimizer.load_state_dict(optim_state)
    if restore_rng:
        torch.set_rng_state(state["rng.torch"])
        cuda_states = [state[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count()) if f"rng.cuda.{i}" in state]
        if torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    return {"step": int(meta["step"]), "extra": meta.get("extra", {})}


def _check_meta(meta: dict[str, Any], state: dict[str, torch.Tensor], directory: Path) -> None:
    """Types of the step, extras and RNG states, which would otherwise fail deep inside torch or the loop."""
    where = f"corrupt checkpoint {str(directory)!r}: {STATE_FILE}"
    if isinstance(meta["step"], bool) or meta["step"] < 0:
        raise ValueError(f"{where} has step {meta['step']!r}, expected an int >= 0")
    extra = meta.get("extra", {})
    if not isinstance(extra, dict):
        raise ValueError(f"{where} has extra of type {type(extra).__name__}, expected a dict")
    for key in ("history", "evals"):
        if key in extra and not (isinstance(extra[key], list) and all(isinstance(x, dict) for x in extra[key])):
            raise ValueError(f"{where} has extra[{key!r}] that is not a list of dicts")
    if "tokens" in extra and (not isinstance(extra["tokens"], int) or extra["tokens"] < 0):
        raise ValueError(f"{where} has extra['tokens'] = {extra['tokens']!r}, expected an int >= 0")
    expected_rng = torch.get_rng_state()
    for name, value in state.items():
        if name.startswith("rng.") and (value.dtype != torch.uint8 or value.dim() != 1):
            raise ValueError(f"{where} holds {name} of dtype {value.dtype} and shape {tuple(value.shape)}, "
                             "expected a 1-D uint8 RNG state")
    if state["rng.torch"].shape != expected_rng.shape:
        raise ValueError(f"{where} holds rng.torch of {state['rng.torch'].numel()} bytes, torch's CPU RNG state "
                         f"has {expected_rng.numel()}")
    with torch.random.fork_rng(devices=[]):  # a damaged byte makes set_rng_state fail after the model is loaded
        try:
            torch.set_rng_state(state["rng.torch"])
        except RuntimeError as err:
            raise ValueError(f"{where} holds an invalid rng.torch state: {err}") from err


def _optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                     meta: Any, directory: Path) -> dict[str, Any]:
    """Rebuild ``optimizer.state_dict()`` from the flat tensors, checking it fits the current parameters and
    holds every entry the current optimizer has (e.g. AdamW's ``exp_avg_sq``)."""
    where = f"corrupt checkpoint {str(directory)!r}: {STATE_FILE}"
    if meta is None:
        raise ValueError(f"checkpoint {str(directory)!r} holds no optimizer state")
    if (not isinstance(meta, dict) or not isinstance(meta.get("param_groups"), list)
            or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in meta["param_groups"])
            or not isinstance(meta.get("scalars", {}), dict)):
        raise ValueError(f"{where} has optimizer metadata without a list of param_groups (each with params)")
    groups = meta["param_groups"]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    saved_counts = [len(g["params"]) for g in groups]
    current_counts = [len(g["params"]) for g in optimizer.param_groups]
    if saved_counts != current_counts:
        raise ValueError(f"checkpoint {str(directory)!r} is from another model shape: optimizer groups hold "
                         f"{saved_counts} parameters, the current optimizer {current_counts}")
    for index, (group, current_group) in enumerate(zip(groups, optimizer.param_groups)):
        _check_hyperparameters(group, current_group, f"{where} param_groups[{index}]")
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        if name.startswith("optim."):
            parts = name.split(".", 2)
            if len(parts) != 3 or not parts[1].isdigit() or not parts[2]:
                raise ValueError(f"{where} holds a tensor named {name!r}, expected optim.<param index>.<name>")
            state.setdefault(int(parts[1]), {})[parts[2]] = tensor
    for pid, values in meta.get("scalars", {}).items():
        if not str(pid).isdigit() or not isinstance(values, dict):
            raise ValueError(f"{where} has optimizer scalars under {pid!r}, expected a parameter index")
        state.setdefault(int(pid), {}).update(values)
    for pid, values in state.items():
        if not 0 <= pid < len(params):
            raise ValueError(f"checkpoint {str(directory)!r} is from another model shape: optimizer state for "
                             f"parameter {pid}, the current optimizer has {len(params)} parameters")
        shape = tuple(params[pid].shape)
        for key, value in values.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) != shape:
                raise ValueError(f"checkpoint {str(directory)!r} is from another model shape: optimizer state "
                                 f"{key} of parameter {pid} is {tuple(value.shape)}, the parameter is {shape}")
    # a parameter with state must have every entry the optimizer keeps (AdamW: step, exp_avg, exp_avg_sq);
    # the current optimizer's own state (after a step) tells which, else AdamW's
    current = optimizer.state_dict()["state"]
    needed = set(next(iter(current.values()))) if current else (
        {"step", "exp_avg", "exp_avg_sq"} if isinstance(optimizer, torch.optim.AdamW) else set())
    for pid, values in state.items():
        lacking = sorted(needed - set(values))
        if lacking:
            raise ValueError(f"{where} lacks optimizer state {lacking} of parameter {pid}")
    return {"state": state, "param_groups": groups}


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_hyperparameters(group: dict[str, Any], current: dict[str, Any], where: str) -> None:
    """Refuse a saved param group whose hyper-parameters do not have the types of the current optimizer's (a
    damaged ``betas`` or a missing ``weight_decay`` would otherwise fail as a TypeError / KeyError inside
    ``optimizer.step()``, after the model is loaded). Flags torch added later (``foreach``, ``fused``, ...) may be
    missing: ``load_state_dict`` fills them in."""
    for key, value in current.items():
        if key == "params" or isinstance(value, torch.Tensor):
            continue
        saved = group.get(key)
        if isinstance(value, bool) or value is None:
            if key in group and saved is not None and not isinstance(saved, bool):
                raise ValueError(f"{where} has {key}={saved!r}, expected True, False or None")
        elif _is_real(value):
            if not _is_real(saved) or saved < 0:
                raise ValueError(f"{where} has {key}={saved!r}, expected a finite number >= 0")
        elif isinstance(value, tuple):
            if (not isinstance(saved, (list, tuple)) or len(saved) != len(value)
                    or not all(_is_real(v) and (key != "betas" or 0 <= v < 1) for v in saved)):
                expected = "numbers in [0, 1)" if key == "betas" else "finite numbers"
                raise ValueError(f"{where} has {key}={saved!r}, expected {len(value)} {expected}")


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The ``step_*`` folder with the highest step under ``out_dir/checkpoints``, or ``None``."""
    root = Path(out_dir) / "checkpoints"
    # isdecimal, not isdigit: "step_²" is a digit to isdigit but int() refuses it (transformers'
    # get_last_checkpoint matches \d+, which ² is not); unfinished "step_N.tmp" folders are skipped
    found = [p for p in root.glob("step_*") if p.is_dir() and p.name.split("_", 1)[1].isdecimal()]
    return max(found, key=lambda p: int(p.name.split("_")[1]), default=None)
