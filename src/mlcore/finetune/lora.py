"""A LoRA layer (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

A frozen linear map ``W0`` (out x in) is left untouched and a low-rank path is added beside it:

    h = base(x) + B · A · dropout(x) · s          A: (r, in), B: (out, r)
    s = alpha / r                                 (LoRA)
    s = alpha / sqrt(r)                           (rsLoRA; Kalajdzievski 2023)

A starts Kaiming-uniform with ``a = sqrt(5)`` (bound ``1 / sqrt(in)``, ``nn.Linear``'s own init) or Gaussian
N(0, 1/r^2); B starts at zero, so ``B A = 0`` and training begins exactly at the base model. Only A and B train:
``r (in + out)`` parameters instead of ``in · out``. Merging folds the update into the base weight,
``W = W0 + s B A``, so inference costs nothing extra; unmerging subtracts it again.

The base is anything with ``in_features`` / ``out_features`` and a forward (``nn.Linear``, mlcore's
``QuantizedLinear`` for QLoRA), or a GPT-2 style ``Conv1D`` (weight stored (in, out)). Attribute names
(``base_layer``, ``lora_A``, ``lora_B``, ``lora_dropout``) are PEFT's, so the adapter's state dict maps to
PEFT's key names by adding a prefix: ``<module path>.lora_A.weight``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from mlcore.finetune.config import check_lora_alpha, check_lora_dropout, check_use_rslora
from mlcore.quant import Int8MixedLinear, QuantizedLinear

# bases whose LoRA sum follows PEFT's bitsandbytes layers (Linear4bit / Linear8bitLt) rather than its nn.Linear
_QUANTIZED_BASES = (QuantizedLinear, Int8MixedLinear)


def check_generator(where: str, generator: object) -> None:
    """ValueError unless ``generator`` is None or a ``torch.Generator``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"{where} generator must be a torch.Generator or None, got {type(generator).__name__}")


def check_module(where: str, model: object) -> None:
    """ValueError unless ``model`` is an ``nn.Module`` (a str or a state dict would fail deep inside instead)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"{where} model must be an nn.Module, got {type(model).__name__}")


def linear_dims(module: nn.Module) -> tuple[int, int, bool] | None:
    """``(in_features, out_features, fan_in_fan_out)`` of a linear-like module, or None if it is not one.

    ``fan_in_fan_out`` is True for transformers' ``Conv1D``, whose weight is stored transposed, (in, out).
    """
    if isinstance(module, LoraLinear):
        return None  # never wrap a wrapper
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx"):
        return int(module.nx), int(module.nf), True
    n_in, n_out = getattr(module, "in_features", None), getattr(module, "out_features", None)
    if isinstance(n_in, int) and isinstance(n_out, int) and callable(getattr(module, "forward", None)):
        return n_in, n_out, False
    return None


def _base_device_dtype(base: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device of the base layer and the dtype LoRA's weights get: float64 over a float64 base, else float32
    (PEFT keeps adapters in float32 over half-precision and quantized bases: ``autocast_adapter_dtype``)."""
    tensors = [*base.parameters(recurse=True), *base.buffers(recurse=True)]
    device = tensors[0].device if tensors else torch.device("cpu")
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    return device, dtype


class LoraLinear(nn.Module):
    """``base(x) + lora_B(lora_A(dropout(x))) * scaling`` over a frozen ``base``.

    x: (..., in_features) -> (..., out_features). The low-rank path runs in the adapter's dtype (float32, or
    float64 over a float64 base) and the sum is cast back to the base output's dtype, as PEFT does.
    """

    def __init__(self, base: nn.Module, r: int, lora_alpha: float, *, lora_dropout: float = 0.0,
                 use_rslora: bool = False, init: str = "kaiming", generator: torch.Generator | None = None) -> None:
        super().__init__()
        dims = linear_dims(base)
        if dims is None:
            raise ValueError(f"LoraLinear base must have int in_features / out_features and a forward (or be a "
                             f"transformers Conv1D), got {type(base).__name__}")
        if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
            raise ValueError(f"LoraLinear r must be a positive int, got {r!r}")
        check_lora_alpha("LoraLinear", lora_alpha)  # the same rules as LoraConfig
        check_lora_dropout("LoraLinear", lora_dropout)
        check_use_rslora("LoraLinear", use_rslora)
        check_generator("LoraLinear", generator)
        self.in_features, self.out_features, self.fan_in_fan_out = dims
        self.r, self.lora_alpha, self.use_rslora = r, lora_alpha, use_rslora
        self.scaling = lora_alpha / (math.sqrt(r) if use_rslora else r)
        self.merged = False
        self.base_layer = base
        for p in base.parameters():
            p.requires_grad_(False)
        device, dtype = _base_device_dtype(base)
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=device, dtype=dtype)  # A: (r, in)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=device, dtype=dtype)  # B: (out, r)
        self.lora_dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.reset_lora_parameters(init, generator=generator)
        # take the mode of the wrapped layer: a wrapper built inside an eval() model must not run its dropout
        self.train(base.training)

    @torch.no_grad()
    def reset_lora_parameters(self, init: str = "kaiming", *, generator: torch.Generator | None = None) -> None:
        """A Kaiming-uniform (a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in))) or N(0, 1/r^2); B = 0."""
        if init == "kaiming":
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5), generator=generator)
        elif init == "gaussian":
            nn.init.normal_(self.lora_A.weight, std=1.0 / self.r, generator=generator)
        else:
            raise ValueError(f"LoraLinear init must be 'kaiming' or 'gaussian', got {init!r}")
        nn.init.zeros_(self.lora_B.weight)

    # -- the base layer's face, so code that reads .weight / .bias keeps working ---------------------------

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base_layer, "bias", None)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"lora_alpha={self.lora_alpha}, scaling={self.scaling:.4g}, merged={self.merged}")

    # -- forward ---------------------------------------------------------------------------------------

    def lora_delta(self, x: torch.Tensor) -> torch.Tensor:
        """The low-rank path alone: (..., in) -> (..., out) = B(A(dropout(x))) * scaling."""
        x = x.to(self.lora_A.weight.dtype)
        return self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result  # the update already lives in the base weight
        if isinstance(self.base_layer, _QUANTIZED_BASES):
            # PEFT's LoRA over bitsandbytes' Linear4bit / Linear8bitLt rounds the low-rank output to the base
            # output's dtype first, then adds (two roundings in bf16 / fp16: QLoRA logits differed by ~0.1)
            return result + self.lora_delta(x).to(result.dtype)
        # PEFT's LoRA over nn.Linear / Conv1D adds in the adapter's float32 and rounds the sum once
        return (result + self.lora_delta(x)).to(result.dtype)

    # -- merging ---------------------------------------------------------------------------------------

    def delta_weight(self) -> torch.Tensor:
        """``scaling · B @ A`` in the layout of the base weight: (out, in), or (in, out) for Conv1D."""
        delta = (self.lora_B.weight @ self.lora_A.weight) * self.scaling
        return delta.T if self.fan_in_fan_out else delta

    def _dense_weight(self) -> torch.Tensor:
        weight = getattr(self.base_layer, "weight", None)
        if not isinstance(weight, torch.Tensor) or not weight.dtype.is_floating_point:
            raise ValueError(
                f"cannot merge LoRA into a {type(self.base_layer).__name__} base: its weight is not a float tensor "
                "(a quantized base must be dequantized first; see mlcore.finetune.qlora)"
            )
        return weight

    @torch.no_grad()
    def merge(self) -> None:
        """``W0 <- W0 + scaling · B A``; the forward then runs the base layer alone."""
        if self.merged:
            return
        weight = self._dense_weight()
        weight.add_(self.delta_weight())  # the float32 delta added in place: one rounding to W's dtype, as PEFT
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """``W <- W - scaling · B A``: the base weight back (up to rounding in its dtype).

        The float32 delta is subtracted with one rounding to W's dtype; PEFT (0.21) rounds the delta to W's dtype
        first, so over a float16 / bfloat16 base the two differ by one ulp in a few weights, and this one gives
        the pre-merge weight back more often (measured: 0.2-1.3% vs 0.4-2.5% of weights off for small deltas)."""
        if not self.merged:
            return
        weight = self._dense_weight()
        weight.sub_(self.delta_weight())
        self.merged = False
