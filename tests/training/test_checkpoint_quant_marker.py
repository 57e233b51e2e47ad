"""Training checkpoints of a model with quantized layers: each ``QuantizedLinear`` now writes a ``weight_format``
marker into its state dict; checkpoints written before the marker existed still load, and a marker of another
format is refused before anything is loaded."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from mlcore.quant import quantize_model
from mlcore.training.checkpoint import MODEL_FILE, load_checkpoint, save_checkpoint


def quantized(scheme: str) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    return quantize_model(model, scheme, blocksize=64)


def test_a_checkpoint_without_the_format_marker_still_loads(tmp_path):
    model = quantized("nf4")
    folder = save_checkpoint(tmp_path / "ckpt", model=model, step=3)
    path = folder / MODEL_FILE
    tensors = load_file(path)
    assert any(k.endswith(".weight_format") for k in tensors)  # written now
    save_file({k: v for k, v in tensors.items() if not k.endswith(".weight_format")}, path)  # as before it
    fresh = quantized("nf4")
    assert load_checkpoint(folder, model=fresh)["step"] == 3
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(fresh(x), model(x))


def test_a_checkpoint_of_another_4bit_format_is_refused_before_any_layer_loads(tmp_path):
    folder = save_checkpoint(tmp_path / "ckpt", model=quantized("nf4"), step=1)
    target = quantized("fp4")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match=r"0.weight_format: another quantization format"):
        load_checkpoint(folder, model=target)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())
