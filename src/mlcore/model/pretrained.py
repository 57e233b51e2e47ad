"""Reading and writing Hugging Face model folders, offline, with safetensors only.

A folder holds ``config.json`` and either ``model.safetensors`` or ``model.safetensors.index.json`` with shards
(``{"weight_map": {tensor name: shard file}}``). Pickled ``pytorch_model.bin`` files are refused: unpickling can
run code, and safetensors is a plain header + raw bytes format (https://huggingface.co/docs/safetensors).

**Loading streams.** ``from_pretrained`` builds the model on the meta device and reads one tensor at a time
(``streaming.stream_into``), each through its own short-lived ``safe_open``: safetensors maps the whole file and
hands out views of the mapping, so one handle held open for the whole load would keep every page it touched
resident (peak RSS = file size). With ``quantize=`` each linear weight is quantized as it arrives, so the peak
stays near the quantized model's size.

**Saving a quantized model.** An HF folder holds plain weights. ``save_pretrained`` refuses a model with
quantized layers unless ``dequantize=True``, which writes each quantized weight dequantized (full size, in the
model's dtype; the safetensors header records which layers and schemes) with a ``UserWarning``: transformers
then computes exactly what the quantized mlcore model computes, but the file is not smaller. To keep the codes,
use ``mlcore.quant.save_quantized`` / ``load_quantized``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mlcore.model.hf_convert import (
    architecture_of,
    config_from_hf,
    config_to_hf,
    gpt2_query_scales,
    untie_if_stored_head_differs,
)
from mlcore.model.hf_weights import hf_state_dict, import_plan
from mlcore.model.streaming import build_on_meta, check_quantize, stream_into

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_FLOAT_CODES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")


class SafetensorsFolder:
    """The tensors of an HF folder (one file or shards): names, shapes and dtypes from the headers, data on demand.

    ``read(key)`` opens the tensor's file, takes the one tensor and closes it again, so that no mapping of the
    file outlives the tensor it served.
    """

    def __init__(self, folder: Path, device: torch.device) -> None:
        self.name, self.device = str(folder), device
        self.files: dict[str, Path] = {}
        self.meta: dict[str, tuple[tuple[int, ...], str]] = {}
        for path, wanted in self._files(folder):
            header = self._header(path)
            if wanted is not None:
                lacking = sorted(set(wanted) - set(header))
                if lacking:
                    raise ValueError(f"shards in {folder} lack tensors listed in the index: {lacking[:8]}")
                header = {k: header[k] for k in wanted}
            for key, info in header.items():
                self.files[key], self.meta[key] = path, info

    @staticmethod
    def _files(folder: Path) -> list[tuple[Path, list[str] | None]]:
        single, index = folder / WEIGHTS_NAME, folder / INDEX_NAME
        if single.is_file():
            return [(single, None)]
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                shards: dict[str, list[str]] = {}
                for key, shard in weight_map.items():
                    if not isinstance(key, str) or not isinstance(shard, str):
                        raise TypeError(f"entry {key!r}: {shard!r} is not a tensor name mapped to a file name")
                    shards.setdefault(shard, []).append(key)
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                raise ValueError(f"{index} is not a valid safetensors index (needs a 'weight_map'): {e}") from e
            for shard in sorted(shards):
                if not (folder / shard).is_file():
                    raise ValueError(f"{index} names shard {shard!r}, which is missing from {folder}")
            return [(folder / shard, keys) for shard, keys in sorted(shards.items())]
        pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt*"))
        if pickles:
            raise ValueError(f"{folder} holds only pickled weights {pickles}; mlcore loads safetensors only "
                             f"({WEIGHTS_NAME} or {INDEX_NAME}). Convert them with a trusted tool first.")
        raise ValueError(f"no weights in {folder}: expected {WEIGHTS_NAME} or {INDEX_NAME}")

    @staticmethod
    def _header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
        try:
            with safe_open(str(path), framework="pt") as f:
                fmt = (f.metadata() or {}).get("format")
                header = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise ValueError(f"could not read safetensors file {path}: {e} (corrupt or truncated?)") from e
        if fmt == "mlcore.quant":
            raise ValueError(f"{path} is an mlcore quantized checkpoint (mlcore.quant.save_quantized), not HF "
                             "weights: read it with mlcore.quant.load_quantized(Transformer(config), path)")
        return header

    def keys(self) -> list[str]:
        return list(self.files)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.meta[key][0]

    def is_float(self, key: str) -> bool:
        return self.meta[key][1] in _FLOAT_CODES

    def read(self, key: str) -> torch.Tensor:
        path = self.files[key]
        try:
            with safe_open(str(path), framework="pt", device=str(self.device)) as f:
                return f.get_tensor(key)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise ValueError(f"could not read tensor {key!r} from {path}: {e} (corrupt or truncated?)") from e


def read_config(folder: str | Path) -> dict[str, Any]:
    """``config.json`` of an HF folder, with clear errors for a missing folder, file or invalid JSON."""
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
    if not isinstance(d, dict):
        raise ValueError(f"from_pretrained: {cfg_path} must hold a JSON object, got {type(d).__name__}")
    return d


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def auto_dtype(config: dict[str, Any], source: SafetensorsFolder) -> torch.dtype:
    """The dtype ``dtype="auto"`` loads in, by transformers' rule (``modeling_utils._get_dtype``): the config's
    ``dtype`` (``torch_dtype`` in older files) when it names one, else the dtype of the checkpoint's first floating
    tensor (8-bit floats skipped), else float32. A folder written by ``save_pretrained`` in bfloat16 says
    ``"dtype": "bfloat16"``, and so loads in bfloat16, as ``AutoModelForCausalLM.from_pretrained`` does by default."""
    for key in ("dtype", "torch_dtype"):
        name = config.get(key)
        if name is None:
            continue
        found = getattr(torch, name, None) if isinstance(name, str) else None
        if not isinstance(found, torch.dtype):
            raise ValueError(f"config.json: {key} must name a torch dtype such as \"bfloat16\", got {name!r}")
        return found
    for key in source.keys():
        code = source.meta[key][1]
        if code in _SAFETENSORS_DTYPES:
            return _SAFETENSORS_DTYPES[code]
    return torch.float32


def check_dtype(dtype: object) -> torch.dtype:
    """``dtype`` if the model can compute in it: a float dtype of 2 bytes or more. The 8-bit float formats are
    storage formats (PyTorch has no norm or matmul kernels for them): a load in one only failed at the first
    forward, so they are refused here (quantize= gives small weights that compute)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or dtype.itemsize < 2:
        raise ValueError(f"dtype: expected a floating torch.dtype to compute in (torch.float32, torch.bfloat16, "
                         f"torch.float16, torch.float64) or 'auto', got {dtype!r}")
    return dtype


def from_pretrained(folder: str | Path, *, dtype: torch.dtype | str = torch.float32, quantize: str | None = None,
                    quant_options: dict[str, Any] | None = None, device: torch.device | str = "cpu"):
    """Build an mlcore ``Transformer`` from an HF folder (Llama, Mistral, Qwen2, GPT-2), fully offline, in eval
    mode with parameters of ``dtype`` (whatever dtype the file stores) on ``device``. ``dtype="auto"`` takes the
    dtype the folder was saved in (:func:`auto_dtype`), as transformers 5's ``from_pretrained`` does by default.

    ``quantize``: None, ``"int8"``, ``"int4"``, ``"nf4"`` or ``"fp4"``: quantize the linear layers while loading
    (see ``mlcore.model.streaming``); ``quant_options``: the scheme's options (``blocksize``, ``double_quant``,
    ``group_size``, ...) and ``skip`` / ``prefer`` as in ``mlcore.quant.quantize_model``. The result equals
    ``quantize_model(from_pretrained(folder, dtype=dtype), quantize, **quant_options)``.
    """
    from mlcore.model.transformer import Transformer

    if not (isinstance(dtype, str) and dtype == "auto"):
        check_dtype(dtype)
    check_quantize(quantize, quant_options)  # before any file is read
    folder = Path(folder)
    d = read_config(folder)
    config = config_from_hf(d)
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: expected a torch device such as 'cpu' or 'cuda', got {device!r}") from e
    if device.type == "meta":  # safetensors cannot read onto it, and the error blamed the file
        raise ValueError("device: 'meta' holds no weights; for a model without memory use "
                         "mlcore.model.streaming.build_on_meta(Transformer, config)")
    source = SafetensorsFolder(folder, device)
    if isinstance(dtype, str):
        dtype = check_dtype(auto_dtype(d, source))
    config = untie_if_stored_head_differs(config, source.keys(), architecture_of(d), source.read)
    plan = import_plan(source.keys(), architecture_of(d), tie_embeddings=config.tie_embeddings,
                       query_scales=gpt2_query_scales(d))
    model = build_on_meta(Transformer, config)
    stream_into(model, plan, source, dtype=dtype, device=device, quantize=quantize, quant_options=quant_options)
    return model.eval()


def exportable_state_dict(model: torch.nn.Module, *, dequantize: bool = False,
                          caller: str = "save_pretrained") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The model's plain mlcore state dict (names and shapes of ``Transformer(model.config)``), and
    {layer: scheme} of the quantized layers it dequantized. Quantized layers are refused unless ``dequantize``;
    anything else that is not a plain weight (LoRA wrappers, ...) is refused with the names it saw."""
    from mlcore.model.transformer import Transformer

    quantized = {name: m for name, m in model.named_modules()
                 if callable(getattr(m, "dequantized_weight", None)) and not isinstance(m, torch.nn.Linear)}
    schemes = {name: str(getattr(m, "quant_metadata", {}).get("scheme", type(m).__name__))
               for name, m in quantized.items()}
    if quantized and not dequantize:
        listed = ", ".join(f"{n} ({s})" for n, s in list(schemes.items())[:4]) + (", ..." if len(quantized) > 4 else "")
        raise ValueError(f"{caller}: the model has {len(quantized)} quantized layers ({listed}); an HF folder holds "
                         "plain weights. Use mlcore.quant.save_quantized(model, path) to keep the codes, or "
                         f"{caller}(..., dequantize=True) to write the dequantized weights at full size")
    sd = dict(model.state_dict())
    dtype = model.embed.weight.dtype
    for name, m in quantized.items():
        for key in [k for k in sd if k.startswith(name + ".")]:
            del sd[key]
        sd[name + ".weight"] = m.dequantized_weight().to(dtype)
        if getattr(m, "bias", None) is not None:
            sd[name + ".bias"] = m.bias.detach()
    skeleton = build_on_meta(Transformer, model.config).state_dict()
    extra, missing = sorted(set(sd) - set(skeleton)), sorted(set(skeleton) - set(sd))
    if extra or missing:
        raise ValueError(f"{caller}: the model's tensors are not a plain Transformer's: unexpected {extra[:6]}, "
                         f"missing {missing[:6]} (LoRA layers? merge_lora(model, unload=True) first)")
    for k, t in sd.items():
        if tuple(t.shape) != tuple(skeleton[k].shape):
            raise ValueError(f"{caller}: tensor {k!r} has shape {tuple(t.shape)}, the config implies "
                             f"{tuple(skeleton[k].shape)}")
    return sd, schemes


def save_pretrained(model, folder: str | Path, *, dequantize: bool = False) -> None:
    """Write a Llama-family mlcore model as an HF folder: ``config.json`` + ``model.safetensors``.

    A model with quantized layers is refused unless ``dequantize=True`` (see the module docstring)."""
    d = config_to_hf(model.config)
    sd, schemes = exportable_state_dict(model, dequantize=dequantize)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    d["dtype"] = str(model.embed.weight.dtype).removeprefix("torch.")
    hf = hf_state_dict(sd, tie_embeddings=model.config.tie_embeddings)
    hf = {k: v.detach().contiguous().cpu() for k, v in hf.items()}
    metadata = {"format": "pt"}
    if schemes:
        metadata["mlcore_dequantized"] = json.dumps(schemes)
        warnings.warn(f"save_pretrained: wrote {len(schemes)} quantized layers dequantized to {d['dtype']} "
                      "(full size; what the quantized model computes); mlcore.quant.save_quantized keeps the codes",
                      stacklevel=2)
    save_file(hf, str(folder / WEIGHTS_NAME), metadata=metadata)
    (folder / CONFIG_NAME).write_text(json.dumps(d, indent=2) + "\n")
