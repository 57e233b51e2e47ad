"""Putting LoRA into a model: find target modules by name, wrap them, freeze the rest, merge and unmerge.

Target matching follows PEFT's rule (``peft.tuners.tuners_utils.check_target_module_exists``), so one
``target_modules`` means the same modules to both libraries:

- a list of names: a module is targeted when its full name equals a name, or ends in ``"." + name``
  (``modules_to_save`` uses PEFT's looser rule: the full name ends in a name, see :func:`resolve_modules_to_save`);
- a string: a regular expression that must match the full module name (``re.fullmatch``);
- ``"all-linear"``: every linear-like module except the output head (``get_output_embeddings()`` of a
  transformers model, or a top-level ``lm_head``) and the ``modules_to_save``.

Works on any ``nn.Module``: mlcore's ``Transformer`` (``layers.{i}.attn.q_proj``, ``layers.{i}.mlp.up_proj``, ...)
and transformers models (``model.layers.{i}.self_attn.q_proj``, ...) alike.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from mlcore.finetune.config import ALL_LINEAR, LoraConfig
from mlcore.finetune.lora import LoraLinear, check_generator, check_module, linear_dims

_FUSED_HINT = ("q_proj", "k_proj", "v_proj")


def lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    """Every :class:`LoraLinear` in ``model``, by module name."""
    check_module("lora_layers", model)
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLinear)}


def has_adapters(model: nn.Module) -> bool:
    """True when ``model`` already holds LoRA layers (mlcore's, or PEFT's ``lora_A`` modules)."""
    return any(isinstance(m, LoraLinear) or hasattr(m, "lora_A") for m in model.modules())


def output_head_name(model: nn.Module) -> str | None:
    """Name of the output head (``get_output_embeddings()`` where a model offers it, else a top-level ``lm_head``)."""
    head = None
    get_head = getattr(model, "get_output_embeddings", None)
    if callable(get_head):
        try:
            head = get_head()
        except (AttributeError, NotImplementedError):
            head = None
    if head is None:
        head = getattr(model, "lm_head", None)
    if not isinstance(head, nn.Module):
        return None
    return next((name for name, m in model.named_modules() if m is head), None)


def name_matches(names: list[str] | str, key: str) -> bool:
    """PEFT's rule: regex string -> full match; list -> equal to a name or ending in ``"." + name``."""
    if isinstance(names, str):
        return re.fullmatch(names, key) is not None
    return key in names or any(key.endswith("." + n) for n in names)


def mha_out_proj_names(model: nn.Module) -> set[str]:
    """Names of the ``out_proj`` layers of ``nn.MultiheadAttention`` modules.

    ``nn.MultiheadAttention.forward`` reads ``out_proj.weight`` / ``.bias`` directly and never calls
    ``out_proj``, so a LoRA layer put there would be silently skipped (PEFT wraps it anyway: its adapter changes
    nothing until merged, and merging then changes the output). mlcore does not wrap them.
    """
    return {f"{name}.out_proj" if name else "out_proj" for name, m in model.named_modules()
            if isinstance(m, nn.MultiheadAttention)}


def linear_module_names(model: nn.Module) -> list[str]:
    """Names of all modules LoRA can wrap (linear-like, not inside an existing LoRA layer, not the ``out_proj``
    of an ``nn.MultiheadAttention``, which never calls it)."""
    skipped = mha_out_proj_names(model)
    return [name for name, m in model.named_modules() if name and linear_dims(m) is not None
            and ".lora_" not in name and not name.endswith(".base_layer") and name not in skipped]


def _candidates_message(model: nn.Module) -> str:
    names = linear_module_names(model)
    suffixes = sorted({n.rsplit(".", 1)[-1] for n in names})
    shown = names if len(names) <= 12 else names[:12] + [f"... ({len(names) - 12} more)"]
    msg = f"linear modules that can be targeted: {shown}; their name suffixes: {suffixes}"
    if any(n.endswith("qkv_proj") for n in names):
        msg += ("; this model fuses q, k and v into one qkv_proj: target 'qkv_proj' (one A shared by q, k, v, "
                "B covering all three outputs)")
    return msg


def resolve_modules_to_save(model: nn.Module, config: LoraConfig) -> list[str]:
    """Full names of the modules trained in full: those whose name ends in a name of ``config.modules_to_save``.

    This is PEFT's rule for modules_to_save (``peft.utils.other._set_trainable``: ``key.endswith(name)``), which
    is looser than the target rule: there is no "." boundary, so ``"head"`` matches ``lm_head`` and ``"norm"``
    matches ``input_layernorm`` and ``post_attention_layernorm`` as well as ``norm``.
    """
    if not config.modules_to_save:
        return []
    found = [n for n, _ in model.named_modules() if n and any(n.endswith(m) for m in config.modules_to_save)]
    if not found:
        raise ValueError(f"modules_to_save={config.modules_to_save} matches no module of "
                         f"{type(model).__name__}; top-level modules: {[n for n, _ in model.named_children()]}")
    return found


def _excluded_as_saved(config: LoraConfig, name: str) -> bool:
    """PEFT's guard that keeps LoRA off modules_to_save (``check_target_module_exists``): a name of
    ``modules_to_save`` is a whole dotted component run of the module's name, e.g. ``score`` in ``score`` or
    ``score.dense``. PEFT does not escape the name; mlcore does, so a name is never read as a regex."""
    return any(re.match(rf"(^|.*\.){re.escape(m)}($|\..*)", name) for m in config.modules_to_save or [])


def _check_no_overlap(model: nn.Module, config: LoraConfig, targets: list[str], excluded: list[str]) -> None:
    """Raise ValueError when LoRA targets and modules_to_save collide.

    PEFT leaves out of LoRA the modules its guard calls saved, but its looser modules_to_save rule can still
    pick a LoRA layer (``["proj"]`` ends ``q_proj``; PEFT then fails with a TypeError): name that overlap. When
    the guard left no target at all, say so rather than "matches no module".
    """
    saved = resolve_modules_to_save(model, config)
    overlap = sorted(t for t in targets if any(t == s or t.startswith(s + ".") or s.startswith(t + ".")
                                               for s in saved))
    if overlap:
        raise ValueError(f"target_modules={config.target_modules!r} and modules_to_save={config.modules_to_save} "
                         f"overlap: {overlap[:8]} would be both LoRA-adapted and trained in full; make them "
                         "disjoint")
    if not targets and excluded:
        raise ValueError(f"target_modules={config.target_modules!r} only matches modules that modules_to_save="
                         f"{config.modules_to_save} trains in full ({excluded[:8]}); a module cannot be both")


def find_targets(model: nn.Module, config: LoraConfig) -> list[str]:
    """Full names of the modules ``config.target_modules`` selects, in ``named_modules`` order.

    Raises ValueError when nothing matches (listing the targetable modules) or when a match is not linear-like.
    """
    check_module("find_targets", model)
    if not isinstance(config, LoraConfig):
        raise ValueError(f"find_targets config must be an mlcore LoraConfig, got {type(config).__name__}")
    excluded: list[str] = []
    if config.target_modules == ALL_LINEAR:
        head = output_head_name(model)
        targets = [n for n in linear_module_names(model) if n != head]
        excluded = [n for n in targets if _excluded_as_saved(config, n)]
        targets = [n for n in targets if n not in excluded]
        _check_no_overlap(model, config, targets, excluded)
        if not targets:
            raise ValueError(f"target_modules='all-linear' found no linear layer besides the output head in "
                             f"{type(model).__name__}")
        return targets
    targets = []
    mha_out = mha_out_proj_names(model)
    for name, module in model.named_modules():
        if not name or not name_matches(config.target_modules, name):
            continue
        if _excluded_as_saved(config, name):
            excluded.append(name)
            continue
        if name in mha_out:
            raise ValueError(f"target_modules={config.target_modules!r} matches {name!r}, the out_proj of an "
                             "nn.MultiheadAttention, whose forward reads out_proj.weight directly and never calls "
                             "out_proj: a LoRA layer there would be silently ignored; "
                             + _candidates_message(model))
        if linear_dims(module) is None:
            raise ValueError(f"target_modules={config.target_modules!r} matches {name!r}, a "
                             f"{type(module).__name__}, but LoRA wraps only linear layers; "
                             + _candidates_message(model))
        targets.append(name)
    _check_no_overlap(model, config, targets, excluded)
    if not targets:
        hint = ""
        if not isinstance(config.target_modules, str) and set(config.target_modules) & set(_FUSED_HINT):
            hint = " (a fused qkv_proj has no separate q_proj / k_proj / v_proj)"
        raise ValueError(f"target_modules={config.target_modules!r} matches no module of "
                         f"{type(model).__name__}{hint}; " + _candidates_message(model))
    return targets


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts as PEFT's ``get_nb_trainable_parameters`` counts them: each shared
    (tied) tensor once, a quantized linear layer's weight (stored in buffers) as its ``in * out`` values, and each
    module of ``modules_to_save`` twice in ``total`` (PEFT keeps its frozen original beside the trained copy)."""
    check_module("trainable_parameters", model)
    trainable = total = 0
    for p in model.parameters():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    for m in model.modules():
        if hasattr(type(m), "quantized_weight") and linear_dims(m) is not None:
            total += m.in_features * m.out_features  # frozen 4- or 8-bit codes
    # the frozen originals PEFT keeps beside its trained copies of modules_to_save (see apply_lora)
    info = getattr(model, "_mlcore_lora", None)
    total += info.get("saved_originals", 0) if isinstance(info, dict) else 0
    return trainable, total


def apply_lora(model: nn.Module, config: LoraConfig, *, generator: torch.Generator | None = None,
               verbose: bool = True) -> nn.Module:
    """Wrap every module ``config.target_modules`` selects in a :class:`LoraLinear` and freeze all else.

    Trainable afterwards: every ``lora_A`` / ``lora_B``, the biases ``config.bias`` names, and the parameters of
    ``config.modules_to_save``. ``generator`` seeds A's initialization (the global RNG when None). With
    ``verbose`` it prints PEFT's line ``trainable params: ... || all params: ... || trainable%: ...``.
    Returns ``model`` (modified in place); :func:`trainable_parameters` gives the counts.
    """
    check_module("apply_lora", model)
    if not isinstance(config, LoraConfig):
        raise ValueError(f"apply_lora config must be an mlcore LoraConfig, got {type(config).__name__}")
    if has_adapters(model):
        raise ValueError("apply_lora: the model already has LoRA adapters; merge_lora(model, unload=True) "
                         "first, or start from a fresh model")
    check_generator("apply_lora", generator)
    targets = find_targets(model, config)
    saved = resolve_modules_to_save(model, config)
    if config.ensure_weight_tying and _names_an_embedding(config):
        _refuse_weight_tying(model, targets + saved)
    before = _unique_numel(model)
    copies = sum(_unique_numel(model.get_submodule(name)) for name in saved)
    for name in saved:
        _untie(model, name)
    # PEFT's ModulesToSaveWrapper keeps each module's frozen original next to a trained copy and counts both;
    # mlcore trains the module itself (untying a shared weight): the originals it has no longer, for the counts
    saved_originals = before + copies - _unique_numel(model)
    for name in targets:
        base = model.get_submodule(name)
        layer = LoraLinear(base, config.r, config.lora_alpha, lora_dropout=config.lora_dropout,
                           use_rslora=config.use_rslora, init=config.init, generator=generator)
        parent_name = name.rpartition(".")[0]
        if isinstance(model.get_submodule(parent_name) if parent_name else model, nn.TransformerEncoderLayer):
            # In eval mode nn.TransformerEncoderLayer takes a fused kernel that reads linear1 / linear2 .weight
            # directly (the LoRA path silently skipped, as under PEFT); it keeps the modular path when any
            # submodule has a hook, so this no-op hook keeps the adapter in the forward.
            layer.register_forward_pre_hook(_keep_modular_path)
        _set_module(model, name, layer)
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_A." in f".{name}" or ".lora_B." in f".{name}")
    if config.bias == "all":
        for name, p in model.named_parameters():
            if name == "bias" or name.endswith(".bias"):
                p.requires_grad_(True)
    elif config.bias == "lora_only":
        for layer in lora_layers(model).values():
            if isinstance(layer.bias, torch.Tensor):
                layer.bias.requires_grad_(True)
    for name in saved:
        for p in model.get_submodule(name).parameters():
            p.requires_grad_(True)
    model._mlcore_lora = {"config": config, "targets": targets, "modules_to_save": saved,
                          "saved_originals": saved_originals}
    if verbose:
        trainable, total = trainable_parameters(model)
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || "
              f"trainable%: {100 * trainable / max(total, 1):.4f}")
    return model


# PEFT's EMBEDDING_LAYER_NAMES: ensure_weight_tying acts only when modules_to_save or target_modules name one
_EMBEDDING_LAYER_NAMES = ("embed_tokens", "lm_head")


def _names_an_embedding(config: LoraConfig) -> bool:
    """PEFT's test (``BaseTuner._check_tied_modules``) for whether ``ensure_weight_tying`` can act: a name of
    ``modules_to_save`` or ``target_modules`` whose last component is ``embed_tokens`` or ``lm_head`` (a regex
    target: one that matches either bare name). GPT-2's ``wte`` is not such a name, so PEFT leaves it untied."""
    saved = config.modules_to_save or []
    if any(m.split(".")[-1] in _EMBEDDING_LAYER_NAMES for m in saved):
        return True
    targets = config.target_modules
    if isinstance(targets, str):
        return targets != ALL_LINEAR and any(re.fullmatch(targets, n) for n in _EMBEDDING_LAYER_NAMES)
    return any(t.split(".")[-1] in _EMBEDDING_LAYER_NAMES for t in targets)


def _refuse_weight_tying(model: nn.Module, names: list[str]) -> None:
    """ValueError when a module LoRA adapts or trains in full shares a weight with a module outside it.

    With ``ensure_weight_tying`` PEFT keeps such a pair tied: training ``embed_tokens`` trains the tied
    ``lm_head`` too (one tensor, gradients from both uses), and a LoRA on ``lm_head`` gets a twin on the
    embedding. mlcore unties the module it trains and wraps linear layers only, which computes the same
    forward from a loaded folder but other gradients in training (measured: 26-42% relative on the embedding),
    so the flag is refused where it would act.
    """
    shared = _shared_weight_names(model)
    for name in names:
        for pname, p in model.get_submodule(name).named_parameters(prefix=name):
            partners = [n for n in shared.get(id(p), []) if n != pname and not n.startswith(name + ".")]
            if partners:
                raise ValueError(f"ensure_weight_tying=True: {name!r} shares {pname!r} with {partners}; PEFT keeps "
                                 "the pair tied while training it, mlcore trains it untied (other gradients): "
                                 "set ensure_weight_tying=False, or untie the weights first")


def _keep_modular_path(module: nn.Module, args: tuple) -> None:
    """A no-op forward pre-hook; its presence turns off ``nn.TransformerEncoderLayer``'s fused fast path."""
    return None


def _unique_numel(module: nn.Module) -> int:
    """Number of parameter values in ``module``, each shared tensor once."""
    return sum(p.numel() for p in module.parameters())


def _untie(model: nn.Module, name: str) -> None:
    """Give module ``name`` its own copy of every parameter it shares with a module outside it.

    PEFT trains a copy of each module to save (``ModulesToSaveWrapper``), so a tied ``lm_head`` trains apart
    from the input embedding, which stays frozen; mlcore matches that by untying the shared tensor here.
    """
    module = model.get_submodule(name)
    outside = {id(p) for n, p in model.named_parameters(remove_duplicate=False) if not n.startswith(name + ".")}
    for pname, p in list(module.named_parameters()):
        if id(p) in outside:
            owner_name, _, leaf = pname.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            setattr(owner, leaf, nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad))


def _shared_weight_names(model: nn.Module) -> dict[int, list[str]]:
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return names


def merge_lora(model: nn.Module, *, unload: bool = False) -> nn.Module:
    """Fold every adapter into its base weight, ``W <- W + scaling · B A``; the forward then skips the LoRA path.

    With ``unload`` the wrappers are replaced by their (merged) base layers: a plain model again, ready for
    ``Transformer.to_hf`` / ``save_pretrained``. A base weight shared with another module (tied embeddings)
    is refused, since merging would change the other module too.
    """
    check_module("merge_lora", model)
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"merge_lora: {type(model).__name__} has no LoRA layers (apply_lora or load_adapter first)")
    shared = _shared_weight_names(model)
    for name, layer in layers.items():
        w = getattr(layer.base_layer, "weight", None)
        if isinstance(w, torch.Tensor) and len(shared.get(id(w), [])) > 1:
            raise ValueError(f"merge_lora: the weight of {name!r} is shared with {shared[id(w)]}; merging would "
                             "change those too (untie the weights or do not target this module)")
    for layer in layers.values():
        if not layer.merged:
            layer._dense_weight()  # raises for a base that cannot merge, before any layer has merged
    for layer in layers.values():
        layer.merge()
    if unload:
        for name, layer in layers.items():
            _set_module(model, name, layer.base_layer)
        if hasattr(model, "_mlcore_lora"):
            del model._mlcore_lora
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_lora` (without ``unload``): ``W <- W - scaling · B A``, the LoRA path runs again."""
    check_module("unmerge_lora", model)
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"unmerge_lora: {type(model).__name__} has no LoRA layers")
    for layer in layers.values():
        layer.unmerge()
    return model
