"""What a fine-tuning method costs: trainable parameters, bytes of the frozen base weights, peak memory of a
training step, time per step.

Peak training memory is counted as the model's own tensors (parameters and buffers, each storage once) plus
the peak of one optimizer step taken from a clean state (no gradients, no optimizer moments yet): that peak
holds the activations saved for backward, the gradients and AdamW's two moments, which is exactly what LoRA
saves on (Hu et al. 2021, section 4.2: gradients and moments only for A and B). On CUDA the step's peak comes
from the caching allocator; on CPU from the profiler's allocation record (``mlcore.bench.peak_memory``).

QLoRA's base weights (Dettmers et al. 2023): NF4 codes are 4 bits = 0.5 bytes per parameter; one absmax per
block of 64 adds 4 / 64 = 0.0625 bytes in float32, or with double quantization 1 / 64 (an 8-bit code) plus
4 / (64 * 256) (a float32 scale per 256 absmaxes) = 0.0159 bytes, so about 0.516 bytes per parameter.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def model_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s parameters and buffers, a shared storage (tied weights) counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def quantized_base_bytes(model: nn.Module) -> tuple[int, int]:
    """``(bytes, parameters)`` of the weights held by quantized linear layers (codes, scales, nested scales)."""
    nbytes = params = 0
    for m in model.modules():
        qt = getattr(m, "quantized_weight", None) if hasattr(type(m), "quantized_weight") else None
        if qt is not None:
            nbytes += qt.nbytes
            params += qt.numel
    return nbytes, params


def peak_step_bytes(step: Callable[[], object], device: torch.device | str) -> int:
    """Peak bytes one call of ``step`` allocates above what was live before it (see the module docstring)."""
    from mlcore.bench import peak_memory

    return peak_memory(step, device=device)


def peak_training_bytes(model: nn.Module, step: Callable[[], object], device: torch.device | str) -> int:
    """``model_bytes(model)`` + the peak of ``step()``, which must start without gradients or optimizer state."""
    if any(p.grad is not None for p in model.parameters()):
        raise ValueError("peak_training_bytes: the model already holds gradients; measure the first step "
                         "(zero_grad(set_to_none=True) and a fresh optimizer)")
    return model_bytes(model) + peak_step_bytes(step, device)


DECODER_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def decoder_linear_shapes(config) -> dict[str, tuple[int, int]]:
    """``name -> (in_features, out_features)`` of one decoder block's linear layers for an mlcore
    ``TransformerConfig`` (Llama layout: q/k/v/o, gated MLP gate/up/down; a plain MLP has no gate)."""
    d, q, kv = config.d_model, config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    shapes = {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
              "up_proj": (d, config.d_ff), "down_proj": (config.d_ff, d)}
    if config.mlp == "swiglu":
        shapes["gate_proj"] = (d, config.d_ff)
    return shapes


def lora_param_count(config, r: int, targets: tuple[str, ...] | None = None) -> int:
    """Trainable parameters of LoRA with rank ``r`` on ``targets`` (default: every linear layer of a block) in
    every block: ``n_layers * sum r (in + out)``."""
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise ValueError(f"r must be a positive int, got {r!r}")
    shapes = decoder_linear_shapes(config)
    targets = tuple(shapes) if targets is None else tuple(targets)
    unknown = sorted(set(targets) - set(shapes))
    if unknown:
        raise ValueError(f"targets {unknown} are not linear layers of this config; known: {sorted(shapes)}")
    return config.n_layers * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets)
