"""Sixth audit, quantization: a QuantizedLinear state dict carries its format (``weight_format``), so an NF4 state
dict no longer loads into an FP4 layer (or one of another dtype or shape) without a word; state dicts and
``save_quantized`` files written before the marker existed still load; the NF4 / FP4 tensors are bitsandbytes'
``Params4bit`` serialisation, one for one."""

from __future__ import annotations

import io
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from mlcore.quant import QuantizedLinear, load_quantized, quantize, quantize_model, save_quantized


def _layer(scheme: str, *, shape=(64, 128), dtype=torch.float32, bias: bool = True, seed: int = 0, **options):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(shape, generator=g) * 0.1).to(dtype)
    b = torch.randn(shape[0], generator=g).to(dtype) if bias else None
    return QuantizedLinear(quantize(w, scheme, **options), b)


@pytest.mark.parametrize("source,target,field", [
    (dict(scheme="nf4"), dict(scheme="fp4"), "scheme"),
    (dict(scheme="fp4"), dict(scheme="nf4"), "scheme"),
    (dict(scheme="nf4", double_quant=False), dict(scheme="fp4", double_quant=False), "scheme"),
    (dict(scheme="nf4", dtype=torch.bfloat16), dict(scheme="nf4"), "dtype"),
    (dict(scheme="fp4"), dict(scheme="fp4", dtype=torch.float16), "dtype"),
    # same number of elements, no bias: the codes and scales fit, the weight would be read transposed
    (dict(scheme="nf4", shape=(64, 128), bias=False), dict(scheme="nf4", shape=(128, 64), bias=False), "shape"),
    (dict(scheme="int8", shape=(64, 128), bias=False, granularity="tensor"),
     dict(scheme="int8", shape=(128, 64), bias=False, granularity="tensor"), "shape"),
    (dict(scheme="int4", group_size=32, dtype=torch.bfloat16), dict(scheme="int4", group_size=32), "dtype"),
])
def test_a_state_dict_of_another_format_is_refused_naming_the_field(source, target, field) -> None:
    src, dst = _layer(**source), _layer(seed=1, **target)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ValueError, match=rf"weight_format.*{field}: "):
        dst.load_state_dict(src.state_dict())
    for k, v in dst.state_dict().items():  # refused before any of the layer's tensors was copied
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("options", [dict(scheme="nf4"), dict(scheme="fp4", double_quant=False),
                                     dict(scheme="int8"), dict(scheme="int4", group_size=32),
                                     dict(scheme="nf4", dtype=torch.bfloat16, blocksize=128)])
def test_same_format_loads_through_torch_save_and_without_the_marker(options) -> None:
    src, dst, old = _layer(**options), _layer(seed=1, **options), _layer(seed=2, **options)
    sd = src.state_dict()
    assert sd["weight_format"].dtype == torch.uint8
    assert json.loads(bytes(sd["weight_format"].tolist()))["scheme"] == options["scheme"]
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    dst.load_state_dict(torch.load(buf, weights_only=True))  # strict: the marker is no unexpected key
    x = torch.randn(3, 128)
    assert torch.equal(dst(x), src(x))
    # a state dict written before the marker existed loads as before (strict: the marker is not required)
    old.load_state_dict({k: v for k, v in sd.items() if k != "weight_format"})
    assert torch.equal(old(x), src(x))


def test_a_model_state_dict_with_an_fp4_layer_does_not_load_into_the_nf4_model() -> None:
    def model(scheme: str) -> nn.Module:
        torch.manual_seed(0)
        return quantize_model(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32)), scheme, skip=())

    with pytest.raises(ValueError, match=r"state_dict\['0.weight_format'\].*'nf4' != 'fp4'"):
        model("fp4").load_state_dict(model("nf4").state_dict())


def _saved(tmp_path):
    torch.manual_seed(0)
    model = quantize_model(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32)), "nf4", skip=())
    path = tmp_path / "q.safetensors"
    save_quantized(model, path)
    with safe_open(str(path), framework="pt") as f:
        return model, path, f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


def test_load_quantized_reads_files_with_and_without_the_marker(tmp_path) -> None:
    model, path, meta, tensors = _saved(tmp_path)
    assert "0.weight_format" in tensors
    x = torch.randn(2, 64)
    fresh = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    assert torch.equal(load_quantized(fresh, path)(x), model(x))
    older = tmp_path / "old.safetensors"  # as written before the marker existed
    save_file({k: v for k, v in tensors.items() if not k.endswith("weight_format")}, str(older), metadata=meta)
    fresh = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    assert torch.equal(load_quantized(fresh, older)(x), model(x))


def test_load_quantized_refuses_a_marker_that_contradicts_the_header(tmp_path) -> None:
    _, path, meta, tensors = _saved(tmp_path)
    marker = json.loads(bytes(tensors["0.weight_format"].tolist()))
    marker["scheme"] = "fp4"
    tensors["0.weight_format"] = torch.tensor(list(json.dumps(marker).encode()), dtype=torch.uint8)
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ValueError, match=r"layer '0': its 0\.weight_format tensor contradicts the header: scheme"):
        load_quantized(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32)), path)


@pytest.mark.parametrize("marker", [torch.zeros(3, 2, dtype=torch.uint8), torch.tensor([1.0, 2.0]),
                                    torch.tensor(list(b"[1, 2]"), dtype=torch.uint8),
                                    torch.tensor([0xFF, 0xFE], dtype=torch.uint8)])
def test_a_corrupt_marker_is_refused_by_name(marker) -> None:
    layer = _layer("nf4")
    sd = layer.state_dict()
    sd["weight_format"] = marker
    with pytest.raises(ValueError, match="weight_format"):
        layer.load_state_dict(sd)


def test_nf4_fp4_tensors_are_bitsandbytes_params4bit_serialisation() -> None:
    """The state dict's tensors, laid out as bitsandbytes' ``Params4bit`` serialises them (``weight``,
    ``weight.absmax``, ``weight.nested_absmax``, ``weight.quant_state.bitsandbytes__nf4``, ...), equal what
    bitsandbytes writes for the same weight; ``Params4bit.from_prequantized`` on them computes the same."""
    bnb = pytest.importorskip("bitsandbytes")
    from bitsandbytes.utils import pack_dict_to_tensor, unpack_tensor_to_dict

    from mlcore.quant import FP4_CODE, NF4_CODE, signed_dynamic_map

    for scheme in ("nf4", "fp4"):
        for dq in (True, False):
            for dtype in (torch.float32, torch.bfloat16):
                w = (torch.randn(96, 128, generator=torch.Generator().manual_seed(1)) * 0.05).to(dtype)
                ours = QuantizedLinear(quantize(w, scheme, double_quant=dq))
                ref = bnb.nn.Linear4bit(128, 96, bias=False, compute_dtype=dtype, quant_type=scheme,
                                        compress_statistics=dq)
                ref.weight = bnb.nn.Params4bit(w.clone(), requires_grad=False, quant_type=scheme,
                                               compress_statistics=dq)
                ref = ref.to("cpu")
                theirs = ref.state_dict()
                meta = json.loads(bytes(ours.state_dict()["weight_format"].tolist()))
                mapped = {"weight": ours.weight_data.reshape(-1, 1), "weight.absmax": ours.weight_scales,
                          "weight.quant_map": torch.tensor(NF4_CODE if scheme == "nf4" else FP4_CODE)}
                qs = {"quant_type": scheme, "blocksize": meta["group_size"], "dtype": meta["dtype"],
                      "shape": meta["shape"]}
                if dq:
                    mapped["weight.nested_absmax"] = ours.weight_nested_absmax
                    mapped["weight.nested_quant_map"] = torch.as_tensor(signed_dynamic_map(), dtype=torch.float32)
                    qs.update(nested_blocksize=meta["nested_blocksize"], nested_dtype="float32",
                              nested_offset=float(ours.weight_nested_offset))
                key = f"weight.quant_state.bitsandbytes__{scheme}"
                mapped[key] = pack_dict_to_tensor(qs)
                assert set(mapped) == set(theirs)
                for k, t in theirs.items():
                    if k == key:
                        assert unpack_tensor_to_dict(t) == {**qs, "shape": list(meta["shape"])}
                    else:
                        assert torch.equal(t.flatten().float(), mapped[k].flatten().float()), k
                stats = {k.removeprefix("weight."): v for k, v in mapped.items() if k != "weight"}
                back = bnb.nn.Linear4bit(128, 96, bias=False, compute_dtype=dtype, quant_type=scheme,
                                         compress_statistics=dq)
                back.weight = bnb.nn.Params4bit.from_prequantized(mapped["weight"], stats, requires_grad=False,
                                                                   device="cpu")
                x = torch.randn(3, 128).to(dtype)
                with torch.no_grad():
                    assert torch.equal(back(x), ours(x))
