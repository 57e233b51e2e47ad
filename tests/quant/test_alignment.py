"""torch 2.13's int8 weight-only kernel (``aten._weight_int8pack_mm``, bfloat16 activations, 4 rows or more)
segfaults on a weight that is not 16-byte aligned or activations that are not 32-byte aligned. safetensors hands
out tensors 8 bytes past a 64-byte boundary, so a bf16 int8 model read back by ``load_quantized`` crashed the
process at its first prefill. QuantizedLinear now keeps its codes aligned and copies misaligned activations."""

from __future__ import annotations

import dataclasses

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mlcore.quant import QuantizedLinear, load_quantized, quantize, quantize_model, save_quantized
from mlcore.quant.kernels import KERNEL_ALIGN


def _misaligned(t: torch.Tensor, offset: int = 8) -> torch.Tensor:
    """A contiguous copy of ``t`` starting ``offset`` bytes past an aligned address."""
    flat = torch.empty(t.numel() * t.element_size() + offset + KERNEL_ALIGN, dtype=torch.uint8)
    start = (-flat.data_ptr()) % KERNEL_ALIGN + offset
    out = flat[start:start + t.numel() * t.element_size()].view(t.dtype).view(t.shape)
    out.copy_(t)
    assert out.data_ptr() % KERNEL_ALIGN == offset
    return out


def test_load_quantized_int8_bf16_codes_are_aligned_and_compute(tmp_path):
    from mlcore.model import Transformer, TransformerConfig

    cfg = TransformerConfig(vocab_size=64, d_model=64, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=96, max_seq_len=32,
                            tie_embeddings=False)
    torch.manual_seed(0)
    model = quantize_model(Transformer(cfg).eval().to(torch.bfloat16), "int8")
    path = tmp_path / "q.safetensors"
    save_quantized(model, path)
    loaded = load_quantized(Transformer(cfg).eval().to(torch.bfloat16), path)
    layers = [m for m in loaded.modules() if isinstance(m, QuantizedLinear)]
    assert len(layers) == 7 and all(m.kernel == "int8pack" for m in layers)
    # checked before any forward: on the old code the codes kept the file's address and the forward crashed
    assert all(m.weight_data.data_ptr() % KERNEL_ALIGN == 0 for m in layers)
    ids = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_layer_built_on_misaligned_codes_keeps_an_aligned_copy():
    torch.manual_seed(0)
    qt = quantize(torch.randn(32, 64), "int8")
    moved = dataclasses.replace(qt, data=_misaligned(qt.data))
    layer = QuantizedLinear(moved, prefer="int8pack")
    assert layer.weight_data.data_ptr() % KERNEL_ALIGN == 0
    assert torch.equal(layer.weight_data, qt.data)
    x = torch.randn(6, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(layer(x), QuantizedLinear(qt, prefer="int8pack")(x))


class _RefuseMisaligned(TorchDispatchMode):
    """Stops a call of the int8 kernel on misaligned tensors before it runs (the old code crashed inside it)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._weight_int8pack_mm.default:
            x, w = args[0], args[1]
            assert x.data_ptr() % 32 == 0 and w.data_ptr() % 16 == 0, (x.data_ptr() % 64, w.data_ptr() % 64)
        return func(*args, **(kwargs or {}))


def test_misaligned_bf16_activations_reach_the_int8_kernel_aligned():
    torch.manual_seed(0)
    layer = QuantizedLinear(quantize(torch.randn(64, 64), "int8"), prefer="int8pack")
    x = _misaligned(torch.randn(6, 64, dtype=torch.bfloat16))
    with torch.no_grad():
        with _RefuseMisaligned():
            y = layer(x)
        ref = layer(x.clone())
    assert layer.last_kernel == "int8pack" and torch.equal(y, ref)
