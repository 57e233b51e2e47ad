"""Audit 6 (quant-core): load_quantized computes in the skeleton's dtype, as every other tensor of the file does."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from mlcore.quant import QuantizedLinear, load_quantized, quantize_model, save_quantized


class _Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(64, 48)
        self.b = nn.Linear(48, 32, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("scheme,options", [("int8", {}), ("int4", {"group_size": 16}), ("nf4", {})])
@pytest.mark.parametrize("quant_dtype,cast", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32),
                                              (torch.float16, torch.bfloat16)])
def test_reload_of_a_cast_model_keeps_its_compute_dtype(tmp_path, scheme, options, quant_dtype, cast):
    # quantize in one dtype, cast with .to(), save, reload into a skeleton of the cast dtype: the layers compute in
    # the cast dtype again (before, they reverted to the dtype the weight was quantized in: `kernel` and the
    # traced scales described another path than the one the activations take), and the outputs are identical
    torch.manual_seed(0)
    model = _Two().to(quant_dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_model(model, scheme, skip=(), **options)
    model.to(cast)
    path = tmp_path / "q.safetensors"
    save_quantized(model, path)
    back = load_quantized(_Two().to(cast), path)
    for name in ("a", "b"):
        old, new = getattr(model, name), getattr(back, name)
        assert isinstance(new, QuantizedLinear)
        assert new.compute_dtype == old.compute_dtype == cast, name
        assert new.kernel == old.kernel, name
        assert new.quantized_weight.dtype == quant_dtype  # the format (and its marker) is unchanged
        if old.bias is not None:
            assert new.bias.dtype == cast and torch.equal(new.bias, old.bias)
    x = torch.randn(3, 64).to(cast)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    back.load_state_dict(model.state_dict())  # the marker still describes the reloaded layers
