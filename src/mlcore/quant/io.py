"""Save and load a quantized model as one safetensors file.

The file holds the model's whole ``state_dict`` (quantized layers as their ``weight_data``, ``weight_scales``,
... buffers, every other parameter and buffer as it is) and, in the safetensors header's ``__metadata__``:

- ``format = "mlcore.quant"``, ``format_version = "1"``;
- ``quantized_layers``: JSON ``{layer name: QuantizedLinear.quant_metadata}`` (scheme, shape, dtype, group /
  block size, granularity, symmetric, double-quant block size, in / out features, bias, ``prefer``: the kernel
  choice, restored on load; absent in older files, read as "auto");
- ``aliases``: JSON ``{name: stored name}`` for tensors that share memory (a tied ``lm_head`` / embedding is
  stored once, as safetensors requires).

Each quantized layer's tensors include ``<layer>.weight_format`` (its state dict's format marker, see
``QuantizedLinear._save_to_state_dict``); files written before it existed lack it and load as before, and one
that contradicts the header is refused.

``load_quantized(skeleton, path)`` takes an unquantized model of the same architecture (randomly initialised is
fine), swaps the listed layers for ``QuantizedLinear`` built from the file and copies everything else in; the
skeleton's float dtype is the one the model computes in (each quantized layer's ``compute_dtype`` and bias follow
its skeleton layer, as every other float tensor does; codes and scales keep their stored dtypes). A file
that is not safetensors, lacks this metadata, or does not fit the skeleton (a missing or extra tensor, a layer
of another shape) raises ``ValueError`` saying what differs; so do NaN / Inf scales and int4 zero points past 15
(``tensor.check_values``), which would otherwise load and turn outputs into NaN. Nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .kernels import unavailable_reason
from .linear import FORMAT_KEY, QuantizedLinear
from .tensor import QuantizedTensor, metadata_from_tensor, metadata_mismatch

FORMAT = "mlcore.quant"
FORMAT_VERSION = "1"


def save_quantized(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Write ``model`` (with at least one ``QuantizedLinear``) to ``path`` as safetensors."""
    layers = {name: m.quant_metadata for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    if not layers:
        raise ValueError("model: expected at least one QuantizedLinear (run quantize_model first), found none")
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    storages: set[int] = set()
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        ptr = t.untyped_storage().data_ptr()
        t = t.detach().to("cpu").contiguous()
        tensors[name] = t.clone() if ptr in storages else t  # a partial view of a stored tensor gets its own copy
        storages.add(ptr)
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "quantized_layers": json.dumps(layers), "aliases": json.dumps(aliases)}
    save_file(tensors, os.fspath(path), metadata=metadata)


def _read(path: str | os.PathLike[str]) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    try:
        with safe_open(os.fspath(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise ValueError(f"path: {os.fspath(path)!r} is not a readable safetensors file ({e})") from e
    return metadata, tensors


def _parse_metadata(path: str, metadata: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    if metadata.get("format") != FORMAT:
        raise ValueError(f"path: {path!r} is not an mlcore quantized checkpoint (header format="
                         f"{metadata.get('format')!r}, expected {FORMAT!r})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"path: {path!r} has format_version {metadata.get('format_version')!r}, "
                         f"expected {FORMAT_VERSION!r}")
    try:
        layers = json.loads(metadata["quantized_layers"])
        aliases = json.loads(metadata.get("aliases", "{}"))
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"path: {path!r} has unreadable quantization metadata ({e})") from e
    if not isinstance(layers, dict) or not all(isinstance(v, dict) for v in layers.values()):
        raise ValueError(f"path: {path!r}: 'quantized_layers' must map layer names to dicts")
    if not isinstance(aliases, dict):
        raise ValueError(f"path: {path!r}: 'aliases' must be a dict")
    return layers, aliases


def _quantized_layer(path: str, model: nn.Module, name: str, meta: dict[str, Any],
                     tensors: dict[str, torch.Tensor]) -> QuantizedLinear:
    try:
        module = model.get_submodule(name)
    except AttributeError as e:
        raise ValueError(f"path: {path!r}: quantized layer {name!r} is not in the model") from e
    if type(module) is not nn.Linear and not isinstance(module, QuantizedLinear):
        raise ValueError(f"path: {path!r}: layer {name!r} is a {type(module).__name__}, expected nn.Linear")
    want = (meta.get("out_features"), meta.get("in_features"))
    if (module.out_features, module.in_features) != want:
        raise ValueError(f"path: {path!r}: layer {name!r} is (out, in) = ({module.out_features}, "
                         f"{module.in_features}) in the model, {want} in the file")
    prefix = name + ".weight_"
    parts = {k[len(prefix):]: tensors.pop(k) for k in [k for k in tensors if k.startswith(prefix)]}
    bias = tensors.pop(name + ".bias", None)
    if bool(meta.get("bias")) != (bias is not None) or (module.bias is not None) != (bias is not None):
        raise ValueError(f"path: {path!r}: layer {name!r}: bias in the file: {bias is not None}, "
                         f"in the model: {module.bias is not None}")
    marker = parts.pop(FORMAT_KEY.removeprefix("weight_"), None)  # absent in files written before it existed
    try:
        qt = QuantizedTensor.from_state_dict(parts, meta)
        if marker is not None:  # the header and the tensors' own marker must describe the same format
            diff = metadata_mismatch(metadata_from_tensor(marker, prefix + "format"), qt.metadata())
            if diff:
                raise ValueError(f"its {prefix}format tensor contradicts the header: {'; '.join(diff)} "
                                 "(tensor != header)")
        unexpected = sorted(parts.keys() - qt.tensors().keys())
        if unexpected:  # an unknown tensor would otherwise be dropped without a word
            raise ValueError(f"unexpected tensors {[prefix + k for k in unexpected]} for its {qt.scheme} weight")
        prefer = meta.get("prefer", "auto")  # files written before prefer was saved: "auto"
        why = unavailable_reason(prefer, qt) if prefer in ("int8pack", "int4pack") else None
        if why is not None:  # a kernel this torch lacks must not make the file unloadable: warn, let "auto" choose
            warnings.warn(f"load_quantized: layer {name!r} was saved with prefer={prefer!r}, which cannot run "
                          f"here ({why}); using prefer='auto'", stacklevel=3)
            prefer = "auto"
        layer = QuantizedLinear(qt, bias, prefer=prefer)
    except ValueError as e:
        raise ValueError(f"path: {path!r}: layer {name!r}: {e}") from e
    # The skeleton's dtype decides the precision the model computes in, as for every other float tensor of the
    # file (copied into the skeleton's tensors): a model quantized in float32 then cast with .to(bfloat16) must
    # come back computing in bfloat16 (its kernel choice, its traced scales), not in the quantized weight's
    # original dtype. .to(dtype) moves the compute dtype and bias only; codes and scales keep their dtypes.
    return layer.to(_skeleton_compute_dtype(module, qt.dtype))


def _skeleton_compute_dtype(module: nn.Module, fallback: torch.dtype) -> torch.dtype:
    """The float dtype ``module`` (the skeleton's ``nn.Linear`` or ``QuantizedLinear``) computes in."""
    if isinstance(module, QuantizedLinear):
        return module.compute_dtype
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dtype in (torch.float32, torch.bfloat16, torch.float16):
        return weight.dtype
    return fallback


def load_quantized(model_skeleton: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load ``save_quantized``'s file into ``model_skeleton`` (modified in place and returned)."""
    spath = os.fspath(path)
    metadata, tensors = _read(spath)
    layers, aliases = _parse_metadata(spath, metadata)
    for alias, target in aliases.items():
        if target not in tensors:
            raise ValueError(f"path: {spath!r}: alias {alias!r} points to missing tensor {target!r}")
        tensors[alias] = tensors[target]
    new_layers = {name: _quantized_layer(spath, model_skeleton, name, meta, tensors) for name, meta in layers.items()}
    quantized = tuple(n + "." for n in layers)
    expected = {k: v for k, v in model_skeleton.state_dict().items() if not k.startswith(quantized)}
    missing, unexpected = sorted(expected.keys() - tensors.keys()), sorted(tensors.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(f"path: {spath!r} does not fit the model: missing {missing[:5]} "
                         f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})")
    for k, t in tensors.items():
        if tuple(t.shape) != tuple(expected[k].shape):
            raise ValueError(f"path: {spath!r}: {k!r} has shape {tuple(t.shape)} in the file, "
                             f"{tuple(expected[k].shape)} in the model")
        want = expected[k].dtype
        if t.is_floating_point() != want.is_floating_point or (not t.is_floating_point() and t.dtype != want):
            raise ValueError(f"path: {spath!r}: {k!r} has dtype {t.dtype} in the file, {want} in the model "
                             "(a float tensor may change precision, not kind)")
    for name, layer in new_layers.items():  # everything checked: now change the model
        parent_name, _, child = name.rpartition(".")
        parent = model_skeleton.get_submodule(parent_name) if parent_name else model_skeleton
        setattr(parent, child, layer)
    with torch.no_grad():
        for k, t in tensors.items():
            expected[k].copy_(t)
    return model_skeleton
