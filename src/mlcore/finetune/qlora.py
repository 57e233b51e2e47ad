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
from mlcore.finetune.lora import check_generator
from mlcore.quant import QuantizedLinear, quantize_model


def prepare_qlora(model: nn.Module, config: LoraConfig, *, blocksize: int = 64, double_quant: bool = True,
                  compute_dtype: torch.dtype | None = None, skip: tuple[str, ...] | None = None,
                  gradient_checkpointing: bool = False, generator: torch.Generator | None = None,
                  verbose: bool = True) -> nn.Module:
    """Quantize ``model``'s linear layers to NF4 (+ double quantization) and apply LoRA over them; in place.

    blocksize / double_quant: the NF4 format (bitsandbytes' defaults for QLoRA). compute_dtype: cast everything
    that is not quantized (embeddings, norms, biases, activations follow) to it, e.g. ``torch.bfloat16`` as in
    the paper; None keeps the model's dtype (float32 on a CPU without fast bf16). skip: module-name suffixes
    kept in full precision (default: the output head and ``config.modules_to_save``). gradient_checkpointing:
    call transformers' ``gradient_checkpointing_enable`` (non-reentrant). Returns ``model``.
    """
    if not isinstance(config, LoraConfig):
        raise ValueError(f"prepare_qlora config must be an mlcore LoraConfig, got {type(config).__name__}")
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
    if not isinstance(model, nn.Module):
        raise ValueError(f"prepare_qlora model must be an nn.Module, got {type(model).__name__}")
    if has_adapters(model):
        raise ValueError("prepare_qlora: the model already has LoRA adapters; start from a fresh model")
    check_generator("prepare_qlora", generator)
    find_targets(model, config)  # raises when the targets do not fit; the names survive quantization
    if skip is None:
        head = output_head_name(model)
        skip = tuple(([head] if head else []) + resolve_modules_to_save(model, config))
    quantize_model(model, "nf4", skip=tuple(skip), blocksize=blocksize, double_quant=double_quant)
    if compute_dtype is not None:
        model.to(compute_dtype)  # QuantizedLinear keeps its codes and scales as stored
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return apply_lora(model, config, generator=generator, verbose=verbose)


def dequantize_lora_bases(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Replace each LoRA layer's ``QuantizedLinear`` base by an ``nn.Linear`` holding the dequantized weight
    (in ``dtype``, default the layer's compute dtype: the dtype the rest of the model runs in, e.g. bfloat16
    after ``prepare_qlora(compute_dtype=torch.bfloat16)``), so that ``merge_lora`` can fold the adapters in:
    ``W = dequant(W_nf4) + (alpha / r) B A``. Returns ``model``."""
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise ValueError(f"dequantize_lora_bases dtype must be a floating torch.dtype (e.g. torch.bfloat16) or "
                         f"None, got {dtype!r}")
    for layer in lora_layers(model).values():
        base = layer.base_layer
        if not isinstance(base, QuantizedLinear):
            continue
        weight = base.dequantized_weight()
        weight = weight.to(dtype if dtype is not None else base.compute_dtype)
        dense = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                          device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            dense.weight.copy_(weight)
            if base.bias is not None:
                dense.bias.copy_(base.bias)
        dense.requires_grad_(False)
        layer.base_layer = dense
    return model
