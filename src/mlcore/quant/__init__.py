"""Quantization from scratch: number formats, a quantized Linear, whole-model quantization, save / load.

- ``int8`` (symmetric absmax or zero point; per tensor, output channel or group) and ``int4`` (zero point per
  group of inputs, GPTQ / AWQ convention ``w = (q - z) * s``): ``int8.py``, ``int4.py``;
- ``nf4`` / ``fp4`` with double quantization in bitsandbytes' exact format (Dettmers et al. 2023, QLoRA):
  ``nf4.py``, code books in ``codebooks.py``;
- ``QuantizedTensor`` (``tensor.py``), ``quantize`` / ``dequantize`` (``api.py``);
- LLM.int8() (``llm_int8.py``), GPTQ (``gptq.py``), AWQ (``awq.py``), calibration hooks (``calibration.py``);
- ``QuantizedLinear`` with PyTorch's CPU int8 / int4 weight-only kernels and a dequantize fallback
  (``linear.py``, ``kernels.py``), ``quantize_model`` (``model.py``), ``save_quantized`` / ``load_quantized``
  (``io.py``).

A leaf package: it imports nothing else of mlcore.
"""

from .api import dequantize, quantize
from .awq import awq_apply_scales, awq_quantize_model, awq_search, awq_search_scales
from .codebooks import FP4_CODE, NF4_CODE, signed_dynamic_map
from .gptq import GPTQResult, gptq_quantize, gptq_quantize_model, layer_output_error, rtn_quantize
from .int4 import int4_from_codes, int4_rtn_codes
from .io import load_quantized, save_quantized
from .linear import QuantizedLinear
from .llm_int8 import Int8MixedLinear
from .model import quantize_model
from .nf4 import from_bitsandbytes
from .tensor import NestedScales, QuantizedTensor

__all__ = [
    "quantize",
    "dequantize",
    "QuantizedTensor",
    "NestedScales",
    "QuantizedLinear",
    "quantize_model",
    "save_quantized",
    "load_quantized",
    "int4_from_codes",
    "int4_rtn_codes",
    "from_bitsandbytes",
    "NF4_CODE",
    "FP4_CODE",
    "signed_dynamic_map",
    "Int8MixedLinear",
    "gptq_quantize",
    "gptq_quantize_model",
    "GPTQResult",
    "rtn_quantize",
    "layer_output_error",
    "awq_search",
    "awq_search_scales",
    "awq_apply_scales",
    "awq_quantize_model",
]
