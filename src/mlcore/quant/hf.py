"""The Hugging Face path to a quantized model, beside mlcore's own: transformers + bitsandbytes.

transformers quantizes while it loads when ``from_pretrained`` gets a ``BitsAndBytesConfig``:

- **4-bit** (``load_in_4bit``; QLoRA, Dettmers et al. 2023): every ``nn.Linear`` but the skipped ones becomes
  ``bitsandbytes.nn.Linear4bit`` holding NF4 or FP4 codes of blocks of 64 elements, with double quantization
  of the block absmax values if ``bnb_4bit_use_double_quant``. mlcore's twin: ``quantize_model(model, "nf4" |
  "fp4", blocksize=64, double_quant=...)`` (or ``Transformer.from_pretrained(dir, quantize="nf4")``).
- **8-bit** (``load_in_8bit``; LLM.int8(), Dettmers et al. 2022): ``bitsandbytes.nn.Linear8bitLt``, int8
  weights per output row, int8 activations per token, outlier feature columns (``|x| >= llm_int8_threshold``,
  6.0) in floating point. mlcore's twin: ``mlcore.quant.llm_int8.Int8MixedLinear`` in every linear layer
  (``quantize_like_bnb(model, "llm_int8")``). It is not mlcore's weight-only ``"int8"`` scheme, whose
  activations stay in floating point and whose weights are not rounded to float16 first.

What runs on CPU with bitsandbytes 0.50 and transformers 5: all three modes load and run. On a CPU with
AVX512-BF16, an eval-mode ``Linear4bit`` called without gradients repacks its weight at its first forward and
multiplies with a bfloat16 kernel (``gemv_4bit``), about 1e-3 relative off float32; ``cpu_bf16_kernel=False``
(or a CPU without AVX512-BF16) keeps bitsandbytes' reference path, ``dequantize_4bit`` then ``F.linear`` in the
compute dtype, which mlcore's dequantize path matches to float rounding. 8-bit runs bitsandbytes' PyTorch CPU
kernels; they rescale by 6.200124e-05 where 1/127^2 = 6.2000124e-05 (see ``llm_int8``).

``bnb_4bit_weights`` / ``bnb_int8_weights`` read what bitsandbytes stored, and ``adopt_bnb_weights`` builds
mlcore layers on exactly those codes and scales, so the two paths can be compared weight for weight.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .linear import QuantizedLinear
from .llm_int8 import Int8MixedLinear
from .model import quantize_model
from .nf4 import check_not_repacked, from_bitsandbytes
from .tensor import FLOAT_DTYPES, QuantizedTensor

BNB_SCHEMES: tuple[str, ...] = ("nf4", "fp4", "llm_int8")
BNB_BLOCKSIZE = 64  # transformers' Linear4bit uses bitsandbytes' default; BitsAndBytesConfig has no knob for it


def _check(scheme: object, skip: object) -> tuple[str, ...]:
    if scheme not in BNB_SCHEMES:
        raise ValueError(f"scheme: expected one of {BNB_SCHEMES}, got {scheme!r}")
    if isinstance(skip, str) or not all(isinstance(s, str) for s in skip):  # type: ignore[union-attr]
        raise ValueError(f"skip: expected a tuple of module names, got {skip!r}")
    return tuple(skip)  # type: ignore[arg-type]


def bnb_config(scheme: str, *, double_quant: bool = True, compute_dtype: torch.dtype = torch.float32,
               threshold: float = 6.0, skip: tuple[str, ...] = ("lm_head",)) -> Any:
    """The ``transformers.BitsAndBytesConfig`` for ``scheme`` ("nf4", "fp4" or "llm_int8")."""
    import transformers

    skip = _check(scheme, skip)
    # the same rules as mlcore's twin (quantize_like_bnb): transformers would pass a NaN or negative threshold
    # (no outlier columns at all), a non-bool double_quant under llm_int8 or an integer compute dtype through
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold < float("inf"):
        raise ValueError(f"threshold: expected a finite number >= 0, got {threshold!r}")
    if not isinstance(double_quant, bool):
        raise ValueError(f"double_quant: expected True or False, got {double_quant!r}")
    if compute_dtype not in FLOAT_DTYPES:
        raise ValueError(f"compute_dtype: expected one of {FLOAT_DTYPES}, got {compute_dtype!r}")
    if scheme == "llm_int8":
        return transformers.BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=threshold,
                                               llm_int8_skip_modules=list(skip))
    return transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=scheme,
                                           bnb_4bit_use_double_quant=double_quant,
                                           bnb_4bit_compute_dtype=compute_dtype, llm_int8_skip_modules=list(skip))


def load_bnb(folder: str | Path, scheme: str, *, double_quant: bool = True, dtype: torch.dtype = torch.float32,
             threshold: float = 6.0, skip: tuple[str, ...] = ("lm_head",), cpu_bf16_kernel: bool = True,
             device: str = "cpu") -> nn.Module:
    """An HF folder loaded by transformers, quantized by bitsandbytes while loading, in eval mode.

    ``dtype`` is what the unquantized tensors (and 4-bit compute) use. ``cpu_bf16_kernel=False`` keeps each
    ``Linear4bit`` on bitsandbytes' dequantize-then-matmul path (see the module docstring). A tied ``lm_head``
    stays in full precision even when ``skip`` leaves it out (with a warning), as in ``quantize_like_bnb``."""
    import transformers

    if not Path(folder).is_dir():
        raise ValueError(f"folder: {folder} is not a directory")
    if dtype not in FLOAT_DTYPES:  # also the 4-bit compute dtype: named here, not as bnb_config's compute_dtype
        raise ValueError(f"dtype: expected one of {FLOAT_DTYPES}, got {dtype!r}")
    skip = _check(scheme, skip)
    # An explicit skip list replaces transformers' own (which keeps tied weights out): a tied lm_head would then
    # be quantized and crash bitsandbytes at the first forward. Keep it in full precision, as quantize_like_bnb
    # (quantize_model's tied-weight rule) does, so both quantize the same layers.
    text_config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True).get_text_config()
    if getattr(text_config, "tie_word_embeddings", False) and "lm_head" not in skip:
        warnings.warn("load_bnb: kept lm_head in full precision (weight tied to the token embedding)", stacklevel=2)
        skip = (*skip, "lm_head")
    config = bnb_config(scheme, double_quant=double_quant, compute_dtype=dtype, threshold=threshold, skip=skip)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=config, device_map={"": device}, dtype=dtype, local_files_only=True)
    if not cpu_bf16_kernel:
        for m in model.modules():
            if hasattr(m, "support_avx512bf16_for_cpu"):
                m.support_avx512bf16_for_cpu = False  # this layer only: no global switch
    return model.eval()


def _bnb_layers(hf_model: nn.Module, kind: str) -> dict[str, nn.Module]:
    return {name: m for name, m in hf_model.named_modules() if type(m).__name__ == kind}


def bnb_4bit_weights(hf_model: nn.Module) -> dict[str, QuantizedTensor]:
    """{module name: QuantizedTensor} of every ``Linear4bit``: bitsandbytes' own codes and (nested) scales.

    Read them before the first forward on an AVX512-BF16 CPU (or load with ``cpu_bf16_kernel=False``): the
    repacked layout of its CPU kernel is refused with a ValueError."""
    out = {}
    for name, m in _bnb_layers(hf_model, "Linear4bit").items():
        state = m.weight.quant_state
        check_not_repacked(state, f"hf_model: layer {name!r}")  # named here; from_bitsandbytes would not
        out[name] = from_bitsandbytes(m.weight.data, state)
    return out


def bnb_int8_weights(hf_model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module name: (int8 codes (out, in), absmax per row (out,) float32)} of every ``Linear8bitLt``.

    Before the first forward bitsandbytes keeps them on the weight (``weight.data``, ``weight.SCB``); its first
    forward (``init_8bit_state``) moves them to ``layer.state.CB`` / ``state.SCB`` and sets ``weight.SCB`` to
    None, so they are read from there after it."""
    out = {}
    for name, m in _bnb_layers(hf_model, "Linear8bitLt").items():
        codes, scales = m.weight.data, getattr(m.weight, "SCB", None)
        state = getattr(m, "state", None)
        if scales is None and getattr(state, "SCB", None) is not None:
            scales = state.SCB
            if getattr(state, "CB", None) is not None:
                codes = state.CB
        if scales is None or codes.dtype != torch.int8 or tuple(scales.shape) != (codes.shape[0],):
            raise ValueError(f"hf_model: layer {name!r} holds no int8 codes with row scales (weight.SCB and "
                             "state.SCB are both unset, or the shapes disagree)")
        out[name] = (codes, scales)
    return out


def _skipped_like_transformers(name: str, skip: tuple[str, ...]) -> bool:
    """Whether transformers' ``llm_int8_skip_modules`` rule keeps module ``name`` unquantized: an entry equal to
    the name, a suffix of it (plain string suffix: "proj" keeps "q_proj" too) or a prefix at a module boundary
    ("model.layers.0" keeps everything under it). That much holds for transformers 5.24 and 5.25 alike; their
    regex readings of an entry differ (5.24 lets "layers.1" reach "layers.11"), so regexes are not followed."""
    return any(name == s or name.endswith(s) or name.startswith(s + ".") for s in skip)


def _replace(model: nn.Module, name: str, layer: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, layer)


def quantize_like_bnb(model: nn.Module, scheme: str, *, double_quant: bool = True, threshold: float = 6.0,
                      skip: tuple[str, ...] = ("lm_head",)) -> nn.Module:
    """mlcore's twin of ``load_bnb(..., scheme)``, in place: the same layers, quantized by mlcore's code.

    "nf4" / "fp4": ``quantize_model(model, scheme, blocksize=64, double_quant=double_quant)``;
    "llm_int8": every ``nn.Linear`` (not skipped, not tied) becomes ``Int8MixedLinear(threshold=threshold)``.
    ``skip`` is read as transformers reads ``llm_int8_skip_modules``: an entry equal to a module's name, a suffix
    of it, or a prefix ending at a module boundary (see ``_skipped_like_transformers``)."""
    skip = _check(scheme, skip)
    if not isinstance(double_quant, bool):  # unused by llm_int8, but refused as bnb_config refuses it
        raise ValueError(f"double_quant: expected True or False, got {double_quant!r}")
    if scheme != "llm_int8":
        # quantize_model's own rule matches whole name parts only: hand it the exact names transformers skips
        names = tuple(n for n, m in model.named_modules()
                      if type(m) is nn.Linear and _skipped_like_transformers(n, skip))
        return quantize_model(model, scheme, skip=names, blocksize=BNB_BLOCKSIZE, double_quant=double_quant)
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    tied = []
    for name, m in list(model.named_modules()):
        if type(m) is not nn.Linear or _skipped_like_transformers(name, skip):
            continue
        if uses[id(m.weight)] > 1:
            tied.append(name)
            continue
        _replace(model, name, Int8MixedLinear.from_linear(m, threshold=threshold))
    if tied:
        warnings.warn(f"quantize_like_bnb(llm_int8): kept in full precision (weight tied): {tied}", stacklevel=2)
    return model


def adopt_bnb_weights(model: nn.Module, hf_model: nn.Module, hf_name: Callable[[str], str]) -> nn.Module:
    """Replace ``model``'s ``nn.Linear`` layers by mlcore layers holding bitsandbytes' codes and scales from
    ``hf_model`` (in place). ``hf_name`` maps a module name of ``model`` to the one in ``hf_model``
    (e.g. mlcore's ``layers.0.attn.q_proj`` -> ``model.layers.0.self_attn.q_proj``). Layers bitsandbytes left
    unquantized stay as they are; a quantized HF layer with no counterpart raises ValueError."""
    four, eight = bnb_4bit_weights(hf_model), bnb_int8_weights(hf_model)
    used = set()
    for name, m in list(model.named_modules()):
        if type(m) is not nn.Linear:
            continue
        theirs = hf_name(name)
        bias = None if m.bias is None else m.bias.detach()
        if theirs in four:
            _replace(model, name, QuantizedLinear(four[theirs], bias, prefer="dequant"))
        elif theirs in eight:
            threshold = float(hf_model.get_submodule(theirs).state.threshold)
            codes, absmax = eight[theirs]
            _replace(model, name, Int8MixedLinear(codes.clone(), absmax.clone(), bias, threshold=threshold))
        else:
            continue
        used.add(theirs)
    left = sorted((set(four) | set(eight)) - used)
    if left:
        raise ValueError(f"hf_model: quantized layers {left[:6]} have no nn.Linear counterpart in model")
    return model
