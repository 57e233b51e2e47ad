"""LoRA adapters on disk in PEFT's format, so PEFT reads what mlcore writes and mlcore reads what PEFT writes.

A folder holds

    adapter_config.json           PEFT's LoraConfig fields (peft_type "LORA", r, lora_alpha, target_modules, ...)
    adapter_model.safetensors     base_model.model.<module path>.lora_A.weight   (r, in)
                                  base_model.model.<module path>.lora_B.weight   (out, r)
                                  base_model.model.<module path>.<param>         (modules_to_save, in full)

which is what ``PeftModel.save_pretrained`` writes (PEFT drops the adapter name ``default`` from its keys).
Loading applies LoRA as the config says, checks that the file's modules and shapes are exactly those, and
only then copies the weights in, so a folder that does not fit leaves the model untouched.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mlcore.finetune.config import ALL_LINEAR, LoraConfig
from mlcore.finetune.inject import (
    apply_lora,
    find_targets,
    has_adapters,
    lora_layers,
    name_matches,
    resolve_modules_to_save,
)
from mlcore.finetune.lora import check_module, linear_dims

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."


def hf_module_name(name: str) -> str:
    """mlcore ``Transformer`` module/parameter path -> its name in the ``Transformer.to_hf()`` (Llama family)
    model: ``layers.0.attn.q_proj`` -> ``model.layers.0.self_attn.q_proj``; ``lm_head`` stays."""
    if name == "lm_head" or name.startswith("lm_head."):
        return name
    name = re.sub(r"^embed(\.|$)", r"embed_tokens\1", name)
    name = re.sub(r"\.attn_norm(\.|$)", r".input_layernorm\1", name)
    name = re.sub(r"\.mlp_norm(\.|$)", r".post_attention_layernorm\1", name)
    return "model." + re.sub(r"\.attn(\.|$)", r".self_attn\1", name)


def _check_directory(where: str, directory: object) -> None:
    if not isinstance(directory, (str, os.PathLike)):
        raise ValueError(f"{where} directory must be a str or a path, got {type(directory).__name__}")


def adapter_state_dict(model: nn.Module, *, rename: Callable[[str], str] | None = None) -> dict[str, torch.Tensor]:
    """The adapter's tensors under PEFT's key names (``base_model.model.<path>.lora_A.weight``, ...);
    ``rename`` maps each parameter path first (see :func:`hf_module_name`)."""
    check_module("adapter_state_dict", model)
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"model: {type(model).__name__} has no LoRA layers to save (apply_lora first)")
    out: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        out[f"{PREFIX}{name}.lora_A.weight"] = layer.lora_A.weight.detach()
        out[f"{PREFIX}{name}.lora_B.weight"] = layer.lora_B.weight.detach()
    info = getattr(model, "_mlcore_lora", None)
    config: LoraConfig | None = info["config"] if info else None
    for module_name in (info["modules_to_save"] if info else []):
        # the full state dict, as PEFT saves it: buffers too (BatchNorm's running statistics)
        for pname, t in model.get_submodule(module_name).state_dict().items():
            out[f"{PREFIX}{module_name}.{pname}"] = t.detach()
    if config is not None and config.bias != "none":  # PEFT's keys: wrapped layers keep ".base_layer."
        # chosen by name, as PEFT does, not by requires_grad: a loaded (frozen) adapter saves its biases again
        wrapped = {f"{name}.base_layer.bias" for name in layers}
        for pname, p in model.named_parameters():
            is_bias = (pname == "bias" or pname.endswith(".bias")) and ".lora_" not in pname
            if is_bias and (config.bias == "all" or pname in wrapped):
                out[f"{PREFIX}{pname}"] = p.detach()
    rename = rename or (lambda n: n)
    return {PREFIX + rename(k.removeprefix(PREFIX)): v.contiguous().cpu() for k, v in out.items()}


def _config_of(model: nn.Module) -> tuple[LoraConfig, list[str]]:
    """The LoraConfig apply_lora stored, or one rebuilt from the layers (hand-built LoraLinear modules)."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"model: {type(model).__name__} has no LoRA layers to save (apply_lora first)")
    info = getattr(model, "_mlcore_lora", None)
    if info is not None:
        return info["config"], info["targets"]
    first = next(iter(layers.values()))
    if any((m.r, m.lora_alpha, m.use_rslora) != (first.r, first.lora_alpha, first.use_rslora)
           for m in layers.values()):
        raise ValueError("save_adapter: LoRA layers with different r / lora_alpha / use_rslora cannot be "
                         "described by one adapter_config.json")
    dropout = first.lora_dropout.p if isinstance(first.lora_dropout, nn.Dropout) else 0.0
    config = LoraConfig(first.r, first.lora_alpha, list(layers), lora_dropout=dropout,
                        use_rslora=first.use_rslora)
    return config, list(layers)


def save_adapter(model: nn.Module, directory: str | Path, *, base_model_name_or_path: str | None = None,
                 hf_names: bool = False) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` in PEFT's format; returns the folder.

    ``"all-linear"`` is written as the list of module names it resolved to (as PEFT does), so the folder
    targets exactly the same modules wherever it is loaded. ``hf_names`` (mlcore ``Transformer`` only) writes
    the module names of ``model.to_hf()`` instead, so PEFT can put the adapter on the exported HF model.
    """
    check_module("save_adapter", model)
    _check_directory("save_adapter", directory)
    config, targets = _config_of(model)
    rename = None
    if hf_names:
        from mlcore.model import Transformer

        if not isinstance(model, Transformer):
            raise ValueError(f"save_adapter hf_names=True needs an mlcore Transformer, got {type(model).__name__}")
        from mlcore.model.hf_convert import config_to_hf

        try:  # the names are those of model.to_hf(); a model it cannot export (GPT-2's layout) has no such names
            config_to_hf(model.config)
        except ValueError as e:
            raise ValueError(f"save_adapter hf_names=True writes the module names of model.to_hf(), which cannot "
                             f"export this model: {e}") from None
        rename = hf_module_name
    tensors = adapter_state_dict(model, rename=rename)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fan_in_fan_out = any(layer.fan_in_fan_out for layer in lora_layers(model).values())
    written = targets if config.target_modules == ALL_LINEAR else None
    if rename is not None:  # a regex over mlcore's names would not match HF's: write the exact names
        written = [rename(t) for t in targets]
        if config.modules_to_save:
            saved = getattr(model, "_mlcore_lora", {}).get("modules_to_save", [])
            config = replace(config, modules_to_save=[rename(n) for n in saved])
    fields = config.to_peft_dict(target_modules=written, base_model_name_or_path=base_model_name_or_path,
                                 fan_in_fan_out=fan_in_fan_out)
    (directory / CONFIG_NAME).write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")
    save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    return directory


def read_adapter(directory: str | Path) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """Parse a PEFT adapter folder into a :class:`LoraConfig` and its tensors (keys without the PEFT prefix)."""
    _check_directory("read_adapter", directory)
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in adapter folder {str(directory)!r}")
    if not weights_path.is_file():
        extra = " (adapter_model.bin is not read: weights load only from safetensors)" \
            if (directory / "adapter_model.bin").is_file() else ""
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in adapter folder {str(directory)!r}{extra}")
    try:
        raw = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"adapter config {str(config_path)!r} is not valid JSON: {e}") from None
    config = LoraConfig.from_peft_dict(raw)
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"adapter weights {str(weights_path)!r} are not a readable safetensors file: {e}") from None
    # PeftModel.save_pretrained writes "base_model.model."; transformers' own PEFT integration writes bare paths.
    return config, {k.removeprefix(PREFIX): v for k, v in tensors.items()}


def _split_keys(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """``{module: {"A": (r, in), "B": (out, r)}}`` and the remaining (full-parameter) tensors."""
    lora: dict[str, dict[str, torch.Tensor]] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        for part in ("A", "B"):
            suffix = f".lora_{part}.weight"
            if key.endswith(suffix):
                lora.setdefault(key[: -len(suffix)], {})[part] = value
                break
        else:
            if ".lora_" in key:
                raise ValueError(f"adapter weight {key!r} is not a plain LoRA A/B matrix (DoRA, embedding LoRA "
                                 "or a named adapter?); mlcore reads lora_A.weight / lora_B.weight only")
            rest[key] = value
    return lora, rest


def _drop_wrapper_copies(rest: dict[str, torch.Tensor], saved: list[str]) -> dict[str, torch.Tensor]:
    """``rest`` without the copies PEFT writes from inside its ``ModulesToSaveWrapper``.

    With ``bias="all"`` PEFT saves every tensor whose key holds "bias", so a module to save that has a bias
    also appears under wrapper paths: ``<m>.modules_to_save.bias`` (the trained copy again, next to the
    ``<m>.bias`` that PEFT loads) and ``<m>.original_module.bias`` (the frozen original, which PEFT's forward
    uses only with the adapter disabled). Either is dropped when the plain ``<m>.<param>`` key is in the file.
    """
    out = {}
    for key, value in rest.items():
        hit = re.fullmatch(r"(.+?)\.(?:modules_to_save|original_module)\.(.+)", key)
        if hit is not None and hit[1] in saved and f"{hit[1]}.{hit[2]}" in rest:
            continue
        out[key] = value
    return out


def _check_fits(model: nn.Module, config: LoraConfig, targets: list[str],
                lora: dict[str, dict[str, torch.Tensor]], rest: dict[str, torch.Tensor]) -> None:
    """Raise ValueError unless the adapter's modules, shapes and extra tensors fit ``model`` exactly."""
    missing, unexpected = sorted(set(targets) - set(lora)), sorted(set(lora) - set(targets))
    if missing or unexpected:
        raise ValueError(f"adapter does not fit {type(model).__name__}: its config targets modules without "
                         f"weights in the file {missing[:8]} and the file has weights for modules the config "
                         f"does not target here {unexpected[:8]}")
    for name in targets:
        n_in, n_out, _ = linear_dims(model.get_submodule(name))
        pair = lora[name]
        if set(pair) != {"A", "B"}:
            raise ValueError(f"adapter has only lora_{''.join(pair)} for {name!r}, expected lora_A and lora_B")
        want = {"A": (config.r, n_in), "B": (n_out, config.r)}
        for part, shape in want.items():
            if tuple(pair[part].shape) != shape:
                raise ValueError(f"adapter lora_{part} of {name!r} has shape {tuple(pair[part].shape)}, the model "
                                 f"needs {shape} (r={config.r}, in={n_in}, out={n_out})")
    params = _tensors_by_name(model)
    for key, value in rest.items():
        key = key.replace(".base_layer.", ".")  # the model has no LoRA wrappers yet
        if key not in params:
            raise ValueError(f"adapter tensor {key!r} names no parameter or buffer of {type(model).__name__}")
        if params[key].shape != value.shape:
            raise ValueError(f"adapter tensor {key!r} has shape {tuple(value.shape)}, the model's tensor "
                             f"has {tuple(params[key].shape)}")


def _tensors_by_name(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer by every name it has: the state dict keeps both names of a tied
    weight (``lm_head.weight`` and ``embed_tokens.weight``), where ``named_parameters()`` drops the second."""
    return model.state_dict(keep_vars=True)


def _from_hf_names(model: nn.Module, config: LoraConfig,
                   tensors: dict[str, torch.Tensor]) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """An adapter written on the HF twin of an mlcore ``Transformer`` (``PeftModel.save_pretrained`` on
    ``model.to_hf()`` or on the Llama / Mistral / Qwen2 model it came ``from_hf``, or :func:`save_adapter` with
    ``hf_names``) -> the same adapter in mlcore's module names.

    The config's ``target_modules`` are matched on the HF names (PEFT's rule, as PEFT did when it wrote the
    folder) and replaced by the mlcore names they select; tensor keys are renamed through :func:`hf_module_name`.
    Anything else (another model, or a folder already in mlcore's names) is returned unchanged.
    """
    from mlcore.model import Transformer

    if not isinstance(model, Transformer):
        return config, tensors
    modules = {hf_module_name(n): n for n, _ in model.named_modules() if n}
    lora_keys = [k.rsplit(".lora_", 1)[0] for k in tensors if ".lora_" in k]
    if not any(modules.get(k, k) != k or k.startswith("model.") for k in lora_keys):
        return config, tensors  # mlcore's own names (or no LoRA weights: read_adapter's checks report it)
    if config.modules_to_save:
        hf_saved = [h for h in modules if any(h.endswith(m) for m in config.modules_to_save)]
        mapped = [modules[h] for h in hf_saved]
        if mapped and sorted(resolve_modules_to_save(model, replace(config, modules_to_save=mapped))) != sorted(mapped):
            raise ValueError(f"adapter modules_to_save={config.modules_to_save} is in the HF export's names; on "
                             f"mlcore's Transformer they map to {mapped}, which PEFT's suffix rule reads as other "
                             "modules too: save the adapter on the mlcore model instead")
        # none mapped: left as written, so apply's check names the modules_to_save that match nothing
        config = replace(config, modules_to_save=mapped or config.modules_to_save)
    if config.target_modules != ALL_LINEAR:  # "all-linear" selects the same layers in both namings
        targets = [n for h, n in modules.items() if name_matches(config.target_modules, h)]
        config = replace(config, target_modules=targets or config.target_modules)
    params = {hf_module_name(n): n for n in model.state_dict()}
    renamed = {}
    for key, value in tensors.items():
        owner, sep, leaf = key.rpartition(".lora_")
        if sep:
            renamed[f"{modules.get(owner, owner)}.lora_{leaf}"] = value  # a name it lacks: _check_fits says so
        else:
            plain = key.replace(".base_layer.", ".")
            renamed[params.get(plain, key)] = value
    return config, renamed


def load_adapter(model: nn.Module, directory: str | Path, *, is_trainable: bool = False) -> nn.Module:
    """Apply LoRA to ``model`` as the folder's config says and load its weights (whoever wrote the folder).

    An mlcore ``Transformer`` also reads a folder in its HF twin's module names (PEFT on ``to_hf()``, or on the
    Llama-family model it was imported from). Like ``PeftModel.from_pretrained``, the adapter is frozen and the
    model put in eval mode unless ``is_trainable``. Raises ValueError when the model already has adapters, or
    when the folder does not fit the model (target names, shapes) or is corrupt; the model is only modified once
    every check has passed.
    """
    check_module("load_adapter", model)
    _check_directory("load_adapter", directory)
    if has_adapters(model):
        raise ValueError(f"load_adapter: {type(model).__name__} already has LoRA adapters; load into a model "
                         "without adapters (or merge_lora(model, unload=True) first)")
    config, tensors = read_adapter(directory)
    config, tensors = _from_hf_names(model, config, tensors)
    lora, rest = _split_keys(tensors)
    try:
        targets = find_targets(model, config)
    except ValueError as e:
        raise ValueError(f"adapter in {str(directory)!r} does not fit {type(model).__name__}: {e}") from None
    rest = _drop_wrapper_copies(rest, resolve_modules_to_save(model, config))
    _check_fits(model, config, targets, lora, rest)
    apply_lora(model, config, verbose=False)
    layers = lora_layers(model)
    params = _tensors_by_name(model)
    with torch.no_grad():
        for name, pair in lora.items():
            layers[name].lora_A.weight.copy_(pair["A"])
            layers[name].lora_B.weight.copy_(pair["B"])
        for key, value in rest.items():
            if key not in params:  # a wrapped layer's bias written without ".base_layer."
                owner, _, leaf = key.rpartition(".")
                key = f"{owner}.base_layer.{leaf}"
            params[key].copy_(value)
    if not is_trainable:  # as PeftModel.from_pretrained: frozen and in eval mode (LoRA dropout off)
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()
    return model
