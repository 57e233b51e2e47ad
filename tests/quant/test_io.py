"""save_quantized / load_quantized: round trip through safetensors (metadata in the header), tied weights,
and clear errors for corrupt or mismatched files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mlcore.quant import QuantizedLinear, load_quantized, quantize_model, save_quantized

from .test_model import llama_model, logits, mlcore_model

IDS = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(3))


def _fresh_mlcore(seed: int = 7, **overrides):
    from mlcore.model import Transformer, TransformerConfig

    torch.manual_seed(seed)
    cfg = dict(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
    cfg.update(overrides)
    return Transformer(TransformerConfig(**cfg)).eval()


@pytest.mark.parametrize("scheme,opts", [("nf4", {}), ("int8", {}), ("int4", {"group_size": 32}),
                                         ("int8", {"symmetric": False, "granularity": "tensor"})])
def test_round_trip_mlcore(tmp_path, scheme, opts):
    model = quantize_model(mlcore_model(), scheme, **opts)
    path = tmp_path / "q.safetensors"
    save_quantized(model, path)
    loaded = load_quantized(_fresh_mlcore(), path)  # a differently initialised skeleton
    with torch.no_grad():
        assert torch.equal(logits(loaded, IDS), logits(model, IDS))
    assert loaded.lm_head.weight is loaded.embed.weight  # the tie survives (stored once)
    q = {n: m for n, m in loaded.named_modules() if isinstance(m, QuantizedLinear)}
    assert len(q) == 14 and all(m.quant_metadata["scheme"] == scheme for m in q.values())
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert "lm_head.weight" not in f.keys()
    assert meta["format"] == "mlcore.quant"
    assert json.loads(meta["aliases"]) == {"lm_head.weight": "embed.weight"}
    assert set(json.loads(meta["quantized_layers"])) == set(q)


def test_round_trip_llama(tmp_path):
    model = quantize_model(llama_model(), "int4", group_size=32)
    save_quantized(model, tmp_path / "q.safetensors")
    loaded = load_quantized(llama_model(), tmp_path / "q.safetensors")
    with torch.no_grad():
        assert torch.equal(logits(loaded, IDS), logits(model, IDS))
    assert {m.kernel_for(torch.bfloat16) for m in loaded.modules() if isinstance(m, QuantizedLinear)} == {"int4pack"}


def test_nothing_quantized_is_refused(tmp_path):
    with pytest.raises(ValueError, match="expected at least one QuantizedLinear"):
        save_quantized(mlcore_model(), tmp_path / "x.safetensors")


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "q.safetensors"
    save_quantized(quantize_model(mlcore_model(), "nf4"), path)
    return path


def test_random_bytes(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        load_quantized(_fresh_mlcore(), path)


def test_truncated_file(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        load_quantized(_fresh_mlcore(), saved)


def test_flipped_header_byte(saved):
    data = bytearray(saved.read_bytes())
    data[12] ^= 0xFF  # inside the JSON header
    saved.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="not a readable safetensors file|mlcore quantized checkpoint"):
        load_quantized(_fresh_mlcore(), saved)


def test_plain_safetensors_without_metadata(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in _fresh_mlcore(tie_embeddings=False).state_dict().items()}, str(path))
    with pytest.raises(ValueError, match="is not an mlcore quantized checkpoint"):
        load_quantized(_fresh_mlcore(), path)


def test_mismatched_architecture(saved):
    with pytest.raises(ValueError, match=r"layer 'layers.0.attn.q_proj' is \(out, in\) = \(96, 96\)"):
        load_quantized(_fresh_mlcore(d_model=96, n_heads=4), saved)
    with pytest.raises(ValueError, match="quantized layer 'layers.1.attn.q_proj' is not in the model"):
        load_quantized(_fresh_mlcore(n_layers=1), saved)
    skeleton = _fresh_mlcore()
    before = {k: v.clone() for k, v in skeleton.state_dict().items()}
    with pytest.raises(ValueError, match="is not in the model"):
        load_quantized(_fresh_mlcore(n_layers=1), saved)
    assert all(torch.equal(before[k], v) for k, v in skeleton.state_dict().items())


def test_extra_layer_in_model(saved):
    with pytest.raises(ValueError, match=r"does not fit the model: missing \['layers.2"):
        load_quantized(_fresh_mlcore(n_layers=3), saved)


def _rewrite(path, tensors_fn=None, meta_fn=None):
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if tensors_fn:
        tensors_fn(tensors)
    if meta_fn:
        meta_fn(meta)
    save_file(tensors, str(path), metadata=meta)


def test_tampered_tensor_and_metadata(saved):
    _rewrite(saved, tensors_fn=lambda t: t.__setitem__("layers.0.attn.q_proj.weight_data",
                                                        t["layers.0.attn.q_proj.weight_data"][:-2]))
    with pytest.raises(ValueError, match=r"layer 'layers.0.attn.q_proj': data.shape: expected \(2048,\)"):
        load_quantized(_fresh_mlcore(), saved)


def test_missing_tensor(saved):
    _rewrite(saved, tensors_fn=lambda t: t.pop("layers.1.mlp.up_proj.weight_nested_absmax"))
    with pytest.raises(ValueError, match="double quantization needs 'nested_absmax'"):
        load_quantized(_fresh_mlcore(), saved)


def test_bad_metadata(saved):
    def bump(meta):
        meta["format_version"] = "99"
    _rewrite(saved, meta_fn=bump)
    with pytest.raises(ValueError, match="format_version '99', expected '1'"):
        load_quantized(_fresh_mlcore(), saved)

    def garble(meta):
        meta["format_version"] = "1"
        meta["quantized_layers"] = "{not json"
    _rewrite(saved, meta_fn=garble)
    with pytest.raises(ValueError, match="unreadable quantization metadata"):
        load_quantized(_fresh_mlcore(), saved)


def test_unknown_scheme_in_metadata(saved):
    def change(meta):
        layers = json.loads(meta["quantized_layers"])
        layers["layers.0.attn.q_proj"]["scheme"] = "int3"
        meta["quantized_layers"] = json.dumps(layers)
    _rewrite(saved, meta_fn=change)
    with pytest.raises(ValueError, match="layers.0.attn.q_proj.*scheme"):
        load_quantized(_fresh_mlcore(), saved)


def test_a_plain_tensor_of_another_kind_is_refused(saved):
    """A norm weight stored as int32 bytes in the file (float in the model) is refused, not cast into garbage."""
    with safe_open(str(saved), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    name = next(k for k in tensors if k.endswith("norm.weight"))
    tensors[name] = tensors[name].view(torch.int32)
    save_file(tensors, str(saved), metadata=meta)
    model = _fresh_mlcore()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="dtype"):
        load_quantized(model, saved)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _set_meta(layer: str, key: str, value):
    def change(meta):
        layers = json.loads(meta["quantized_layers"])
        layers[layer][key] = value
        meta["quantized_layers"] = json.dumps(layers)
    return change


@pytest.mark.parametrize(("key", "value", "match"), [
    ("dtype", [1, 2], r"metadata\['dtype'\]: expected one of"),  # was TypeError: unhashable type: 'list'
    ("nested_blocksize", [32, 64], r"metadata\['nested_blocksize'\]: expected an int or None"),  # TypeError
    ("nested_blocksize", 2**40, r"nested.blocksize: expected one of \(32, 64"),  # tried to allocate 2**40 floats
    ("group_size", 2**40, r"group_size: expected one of \(32, 64"),
])
def test_corrupt_metadata_values_give_value_errors(saved, key, value, match):
    """Metadata values of the wrong type or size are refused by name, not a TypeError or an allocation of
    terabytes at the first forward."""
    _rewrite(saved, meta_fn=_set_meta("layers.0.attn.q_proj", key, value))
    with pytest.raises(ValueError, match=rf"layer 'layers.0.attn.q_proj': {match}"):
        load_quantized(_fresh_mlcore(), saved)


@pytest.mark.parametrize(("suffix", "change", "match"), [
    ("weight_nested_absmax", lambda t: t.to(torch.uint8), r"nested.absmax.dtype: expected torch.float32"),
    ("weight_nested_offset", lambda t: t.to(torch.float16), r"nested.offset.dtype: expected torch.float32"),
    ("weight_nested_offset", lambda t: t.reshape(1, 1), r"nested.offset.shape: expected \(\) or \(1,\)"),
    ("weight_data", lambda t: t.clone(), r"unexpected tensors \['layers.0.attn.q_proj.weight_data_copy'\]"),
])
def test_corrupt_quantized_tensors_are_refused(saved, suffix, change, match):
    """Double-quant scales in another dtype (truncated to integers: silently wrong weights), an offset of shape
    (1, 1) (a broadcasting RuntimeError at the first forward) and an unknown tensor of a quantized layer (dropped
    without a word) were all loaded; now each is a ValueError naming the layer."""
    name = "layers.0.attn.q_proj." + suffix

    def edit(tensors):
        if suffix == "weight_data":
            tensors[name + "_copy"] = change(tensors[name])
        else:
            tensors[name] = change(tensors[name])
    _rewrite(saved, tensors_fn=edit)
    with pytest.raises(ValueError, match=rf"layer 'layers.0.attn.q_proj': {match}"):
        load_quantized(_fresh_mlcore(), saved)


def test_integer_bias_of_a_quantized_layer_is_refused(tmp_path):
    """A quantized layer's bias stored as integers was loaded as an integer parameter (truncated values); the
    rule for every other tensor (a float may change precision, not kind) now holds for it too."""
    def build():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU())

    path = tmp_path / "m.safetensors"
    save_quantized(quantize_model(build(), "int8"), path)
    _rewrite(path, tensors_fn=lambda t: t.__setitem__("0.bias", (t["0.bias"] * 100).to(torch.int32)))
    with pytest.raises(ValueError, match="layer '0': bias.dtype: expected a floating-point tensor, got torch.int32"):
        load_quantized(build(), path)


def _small():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU())


@pytest.mark.parametrize(("scheme", "opts", "key", "change", "match"), [
    ("int8", {}, "weight_scales", lambda t: t.index_fill(0, torch.tensor([3]), float("nan")),
     r"scales: expected finite values, got 1 NaN/Inf of 32"),
    ("int4", {"group_size": 32}, "weight_scales", lambda t: t * float("inf"), r"scales: expected finite values"),
    ("int4", {"group_size": 32}, "weight_zeros", lambda t: t + 100, r"zeros: expected int4 zero points in \[0, 15\]"),
    ("nf4", {"double_quant": False}, "weight_scales", lambda t: t * float("nan"), r"scales: expected finite"),
    ("nf4", {}, "weight_nested_absmax", lambda t: t * float("nan"), r"nested_absmax: expected finite values"),
    ("nf4", {}, "weight_nested_offset", lambda t: t * float("nan"), r"nested_offset: expected finite values"),
])
def test_non_finite_scales_and_bad_zero_points_are_refused(tmp_path, scheme, opts, key, change, match):
    """A NaN / Inf scale (or double-quant level) in a file loaded silently and made whole groups of outputs NaN;
    an int4 zero point past 15 (a valid uint8, no int4 grid's) loaded too. Each is now refused naming the layer
    and the tensor, before the model changes."""
    path = tmp_path / "m.safetensors"
    save_quantized(quantize_model(_small(), scheme, **opts), path)
    _rewrite(path, tensors_fn=lambda t: t.__setitem__("0." + key, change(t["0." + key]).contiguous()))
    skeleton = _small()
    with pytest.raises(ValueError, match=rf"layer '0': {match}"):
        load_quantized(skeleton, path)
    assert type(skeleton[0]) is torch.nn.Linear


@pytest.mark.parametrize("scheme,opts,prefer", [("int8", {}, "int8pack"), ("int4", {"group_size": 32}, "int4pack"),
                                                ("int4", {"group_size": 32}, "dequant")])
def test_prefer_survives_the_round_trip(tmp_path, scheme, opts, prefer):
    """load_quantized rebuilt every layer with prefer="auto": a bf16 model forced onto the exact dequantize path
    came back on int4pack (bf16-rounded scales), an fp32 one forced onto a kernel came back on dequantize; the
    logits changed. ``prefer`` is now saved and restored (a file without it still reads as "auto")."""
    dtype = torch.bfloat16 if prefer == "dequant" else torch.float32
    model = quantize_model(mlcore_model().to(dtype), scheme, prefer=prefer, **opts)
    path = tmp_path / "q.safetensors"
    save_quantized(model, path)
    loaded = load_quantized(_fresh_mlcore().to(dtype), path)
    layers = [m for m in loaded.modules() if isinstance(m, QuantizedLinear)]
    assert {(m.prefer, m.kernel) for m in layers} == {(prefer, prefer)}
    with torch.no_grad():
        assert torch.equal(logits(loaded, IDS), logits(model, IDS))
    with safe_open(str(path), framework="pt") as f:  # an older file: no prefer in the metadata
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    layers_meta = json.loads(meta["quantized_layers"])
    for name in layers_meta:
        del layers_meta[name]["prefer"]
    save_file(tensors, str(path), metadata={**meta, "quantized_layers": json.dumps(layers_meta)})
    assert {m.prefer for m in load_quantized(_fresh_mlcore().to(dtype), path).modules()
            if isinstance(m, QuantizedLinear)} == {"auto"}
    layers_meta[name]["prefer"] = "fastest"  # a tampered value is refused, naming the layer
    save_file(tensors, str(path), metadata={**meta, "quantized_layers": json.dumps(layers_meta)})
    with pytest.raises(ValueError, match=rf"layer '{name}': prefer: expected 'auto' or one of"):
        load_quantized(_fresh_mlcore().to(dtype), path)
