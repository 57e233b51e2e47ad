"""QLoRA (Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs"): LoRA over a frozen 4-bit base.

The base weights are stored in NF4 (4-bit NormalFloat, blocks of 64) with double quantization (the per-block
absmax scales themselves quantized to 8 bits in blocks of 256): about 0.5 + 0.127 / 8 bytes per parameter
instead of 2 (bf16). The forward dequantizes each weight to the compute dtype and adds the LoRA path, which
keeps its float32 A and B:

    h = dequant(W_nf4) x + (alpha / r) · B A x          (gradients flow to A and B only)

This is not a second LoRA implementation: :func:`prepare_qlora` is ``mlcore.quant.quantize_model(model, "nf4",
double_quant=True)`` followed by :func:`mlcore.finetune.apply_lora`, whose :class:`LoraLinear` wraps the
``QuantizedLinear`` layers like any other linear layer. The output head and ``modules_to_save`` stay in full
precision (as transformers' ``BitsAndBytesConfig`` keeps ``lm_head``).
"""

from __future__ import annotations

import torch
from torch import nn

from mlcore.finetune.config import LoraConfig
from mlcore.finetune.inject import (
    apply_lora,
    find_targets,
    has_adapters,
    lora_layers,
    output_head_name,
    resolve_modules_to_save,
)
from mlcore.finetune.lora import check_generator, check_module, linear_dims
from mlcore.quant import QuantizedLinear, quantize_model
from mlcore.quant.api import check_scheme
from mlcore.quant.tensor import FOUR_BIT_BLOCKSIZES

# set on a QuantizedLinear made from a Conv1D, so dequantize_lora_bases gives GPT-2's layout back
FROM_CONV1D = "_mlcore_from_conv1d"


def _conv1d_to_linear(model: nn.Module, skip: tuple[str, ...]) -> list[str]:
    """Replace each transformers ``Conv1D`` (GPT-2; weight stored (in, out)) not named in ``skip`` by the
    ``nn.Linear`` holding its weight transposed, (out, in): the same map, in the layout ``quantize_model``
    quantizes, as transformers' bitsandbytes loader turns GPT-2's Conv1D into ``Linear4bit``. A weight shared
    with another module is left alone (quantizing it would untie it). Returns the names replaced."""
    uses: dict[int, int] = {}
    replaced = []
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    for name, module in list(model.named_modules()):
        dims = linear_dims(module)
        if (not name or dims is None or not dims[2] or uses.get(id(module.weight), 0) > 1
                or any(name == s or name.endswith("." + s) for s in skip)):
            continue
        n_in, n_out, _ = dims
        linear = nn.Linear(n_in, n_out, bias=module.bias is not None, device=module.weight.device,
                           dtype=module.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(module.weight.T)  # (in, out) -> (out, in)
            if module.bias is not None:
                linear.bias.copy_(module.bias)
        linear.train(module.training)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, linear)
        replaced.append(name)
    return replaced


QUANT_TYPES = ("nf4", "fp4")


def _cast_like_from_pretrained(model: nn.Module, dtype: torch.dtype) -> None:
    """``model.to(dtype)``, except that a transformers ``*RotaryEmbedding`` keeps its float32 ``inv_freq``.

    ``from_pretrained(dtype=torch.bfloat16)`` builds the rotary module with frequencies computed in float32 and
    keeps them so (its forward computes cos / sin in float32 and casts the result); ``model.to(torch.bfloat16)``
    would round them, and every angle ``m * theta_i`` with them (QLoRA logits off transformers' by ~0.03 at
    12 positions). mlcore's own ``RotaryEmbedding`` keeps float32 by itself.
    """
    kept = []
    for module in model.modules():
        if type(module).__name__.endswith("RotaryEmbedding"):
            for name, buf in module.named_buffers(recurse=False):
                if buf is not None and buf.dtype == torch.float32:
                    kept.append((module, name, buf))
    model.to(dtype)
    for module, name, buf in kept:
        module._buffers[name] = buf.to(module._buffers[name].device)


def prepare_qlora(model: nn.Module, config: LoraConfig, *, blocksize: int = 64, double_quant: bool = True,
                  compute_dtype: torch.dtype | None = None, skip: tuple[str, ...] | None = None,
                  gradient_checkpointing: bool = False, generator: torch.Generator | None = None,
                  verbose: bool = True, quant_type: str = "nf4") -> nn.Module:
    """Quantize ``model``'s linear layers to NF4 (+ double quantization) and apply LoRA over them; in place.

    quant_type / blocksize / double_quant: the 4-bit format, ``"nf4"`` (QLoRA's) or ``"fp4"``, as
    ``BitsAndBytesConfig``'s ``bnb_4bit_quant_type`` / ``bnb_4bit_use_double_quant`` (bitsandbytes' block size
    64). compute_dtype: the model is cast to it (embeddings, norms, biases; activations follow) *before* its
    weights are quantized, e.g. ``torch.bfloat16`` as in the paper: transformers'
    ``from_pretrained(dtype=compute_dtype, quantization_config=BitsAndBytesConfig(load_in_4bit=True,
    bnb_4bit_compute_dtype=compute_dtype))`` quantizes the weights in that dtype too, so the packed bytes and
    scales are bitsandbytes' own; None keeps the model's dtype (float32 on a CPU without fast bf16). skip: module-name suffixes
    kept in full precision (default: the output head and ``config.modules_to_save``). gradient_checkpointing:
    call transformers' ``gradient_checkpointing_enable`` (non-reentrant). GPT-2's ``Conv1D`` layers become
    ``nn.Linear`` (weight transposed) before quantizing, as in transformers' bitsandbytes loader. Returns ``model``.
    """
    if not isinstance(config, LoraConfig):
        raise ValueError(f"prepare_qlora config must be an mlcore LoraConfig, got {type(config).__name__}")
    if quant_type not in QUANT_TYPES:
        raise ValueError(f"prepare_qlora quant_type must be one of {QUANT_TYPES}, got {quant_type!r}")
    if compute_dtype is not None and compute_dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"prepare_qlora compute_dtype must be float32, float16 or bfloat16, got {compute_dtype}")
    if gradient_checkpointing and not callable(getattr(model, "gradient_checkpointing_enable", None)):
        raise ValueError(f"prepare_qlora gradient_checkpointing=True: {type(model).__name__} has no "
                         "gradient_checkpointing_enable()")
    if skip is not None and (isinstance(skip, str) or not isinstance(skip, (tuple, list))
                             or not all(isinstance(s, str) for s in skip)):
        # a bare string would be read as a sequence of letters and skip nothing
        raise ValueError(f"prepare_qlora skip must be a tuple of module-name suffixes, got {skip!r}")
    # every check apply_lora makes, before quantizing: a refused call must leave the model as it was
    check_module("prepare_qlora", model)
    if has_adapters(model):
        raise ValueError("prepare_qlora: the model already has LoRA adapters; start from a fresh model")
    check_generator("prepare_qlora", generator)
    find_targets(model, config)  # raises when the targets do not fit; the names survive quantization
    if skip is None:
        head = output_head_name(model)
        skip = tuple(([head] if head else []) + resolve_modules_to_save(model, config))
    quant_options = dict(blocksize=blocksize, double_quant=double_quant)
    check_scheme(quant_type, quant_options)
    if not isinstance(blocksize, int) or isinstance(blocksize, bool) or blocksize not in FOUR_BIT_BLOCKSIZES:
        raise ValueError(f"prepare_qlora blocksize must be one of {FOUR_BIT_BLOCKSIZES}, got {blocksize!r}")
    if not isinstance(double_quant, bool):
        raise ValueError(f"prepare_qlora double_quant must be True or False, got {double_quant!r}")
    if compute_dtype is not None:
        # before quantizing, as transformers' loader: the weights are rounded to compute_dtype, then quantized
        # (quantizing the float32 weights first gave other codes and absmax values than bitsandbytes' in
        # bfloat16 / float16: ~1-3% of the bytes); QuantizedLinear then dequantizes to compute_dtype as
        # Linear4bit does to its quant_state.dtype
        _cast_like_from_pretrained(model, compute_dtype)
    converted = _conv1d_to_linear(model, tuple(skip))  # else GPT-2's Conv1D would silently stay full precision
    quantize_model(model, quant_type, skip=tuple(skip), **quant_options)
    for name in converted:
        setattr(model.get_submodule(name), FROM_CONV1D, True)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return apply_lora(model, config, generator=generator, verbose=verbose)


def dequantize_lora_bases(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Replace each LoRA layer's ``QuantizedLinear`` base by an ``nn.Linear`` holding the dequantized weight
    (in ``dtype``, default the layer's compute dtype: the dtype the rest of the model runs in, e.g. bfloat16
    after ``prepare_qlora(compute_dtype=torch.bfloat16)``), so that ``merge_lora`` can fold the adapters in:
    ``W = dequant(W_nf4) + (alpha / r) B A``. A base that :func:`prepare_qlora` made from a GPT-2 ``Conv1D``
    becomes a ``Conv1D`` again (weight (in, out)), so the merged model saves in GPT-2's layout. Returns ``model``."""
    check_module("dequantize_lora_bases", model)
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise ValueError(f"dequantize_lora_bases dtype must be a floating torch.dtype (e.g. torch.bfloat16) or "
                         f"None, got {dtype!r}")
    for layer in lora_layers(model).values():
        base = layer.base_layer
        if not isinstance(base, QuantizedLinear):
            continue
        weight = base.dequantized_weight()
        weight = weight.to(dtype if dtype is not None else base.compute_dtype)
        if getattr(base, FROM_CONV1D, False):
            from transformers.pytorch_utils import Conv1D  # the model came from transformers

            dense = Conv1D(base.out_features, base.in_features).to(device=weight.device, dtype=weight.dtype)
            weight = weight.T  # (out, in) -> Conv1D's (in, out); merging then adds B A transposed
        else:
            dense = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                              device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            dense.weight.copy_(weight)
            if base.bias is not None:
                dense.bias.copy_(base.bias)
        dense.requires_grad_(False)
        layer.base_layer = dense
        layer.fan_in_fan_out = not isinstance(dense, nn.Linear)  # Conv1D: delta_weight transposes B A
    return model
