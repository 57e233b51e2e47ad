"""Streamed loading (meta build, tensor by tensor, quantized while loading), the tied-head rule, export of a
quantized model, and clear errors for bad checkpoints and arguments.

The reference for a streamed quantized load is load-then-quantize, ``quantize_model(from_pretrained(dir))``:
equal tensor for tensor; for exports, transformers reading the folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mlcore.model import Transformer, TransformerConfig
from mlcore.model.hf_weights import from_hf_name, to_hf_name
from mlcore.model.pretrained import SafetensorsFolder
from mlcore.quant import QuantizedLinear, quantize_model, save_quantized

from ._model_testutils import VOCAB, gpt2, hf_logits, llama_family

PROBE = Path(__file__).with_name("_memory_probe.py")


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Same tensors (names, dtypes, values), same layer types and quantization metadata, same frozen flags."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    def kinds(m):
        return [(n, type(x).__name__, getattr(x, "quant_metadata", None)) for n, x in m.named_modules()]

    assert kinds(a) == kinds(b)
    for n, m in a.named_modules():
        if isinstance(m, QuantizedLinear):
            assert m.kernel == b.get_submodule(n).kernel, n
    assert [(n, p.requires_grad) for n, p in a.named_parameters()] == [
        (n, p.requires_grad) for n, p in b.named_parameters()]


def _ids(n: int = 12) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, n), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory):
    """Untied head and q/k/v biases: quantized layers with a bias, a quantizable lm_head."""
    folder = tmp_path_factory.mktemp("qwen2")
    llama_family("qwen2", tie_word_embeddings=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tied_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tied")
    config = TransformerConfig(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)
    torch.manual_seed(0)
    Transformer(config).save_pretrained(folder)
    return folder


CASES = [("nf4", {}), ("nf4", {"double_quant": False, "blocksize": 128}), ("fp4", {"skip": ()}),
         ("int8", {"skip": ()}), ("int8", {"symmetric": False, "granularity": "group", "group_size": 32}),
         ("int4", {"group_size": 32, "skip": ()}), ("int4", {"group_size": 128})]


@pytest.mark.parametrize("scheme,options", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streamed_quantized_load_equals_load_then_quantize(qwen2_dir, scheme, options, dtype):
    with warnings.catch_warnings(record=True) as streamed_warnings:
        warnings.simplefilter("always")
        streamed = Transformer.from_pretrained(qwen2_dir, dtype=dtype, quantize=scheme, quant_options=options)
    with warnings.catch_warnings(record=True) as reference_warnings:
        warnings.simplefilter("always")
        reference = quantize_model(Transformer.from_pretrained(qwen2_dir, dtype=dtype), scheme, **options)
    _same_state(streamed, reference)
    assert sum(isinstance(m, QuantizedLinear) for m in streamed.modules()) > 0
    with torch.no_grad():
        assert torch.equal(streamed(_ids()), reference(_ids()))
    # the same layers kept in full precision, announced the same way (int4 g128: in_features 64 < 128)
    def kept(caught):
        return [str(w.message).split("kept in full precision: ")[-1] for w in caught if "kept" in str(w.message)]

    assert kept(streamed_warnings) == kept(reference_warnings)
    assert not streamed.training and all(not t.is_meta for t in streamed.state_dict().values())


def test_gpt2_streamed_quantized_load(tmp_path):
    """Fused c_attn split into q, k, v and the folded query scale, quantized as they stream."""
    gpt2(scale_attn_by_inverse_layer_idx=True).save_pretrained(tmp_path)
    streamed = Transformer.from_pretrained(tmp_path, quantize="int8")
    _same_state(streamed, quantize_model(Transformer.from_pretrained(tmp_path), "int8"))


@pytest.mark.cuda
@pytest.mark.parametrize("quantize", [None, "nf4", "int8"])
def test_streamed_load_onto_cuda(qwen2_dir, quantize):
    """Tensors go straight from the file to the GPU (and are quantized there): same values as on CPU."""
    gpu = Transformer.from_pretrained(qwen2_dir, quantize=quantize, device="cuda")
    cpu = Transformer.from_pretrained(qwen2_dir, quantize=quantize)
    assert {t.device.type for t in gpu.state_dict().values()} == {"cuda"}
    for k, t in cpu.state_dict().items():
        g = gpu.state_dict()[k].cpu()
        if t.is_floating_point():
            torch.testing.assert_close(g, t, rtol=1e-6, atol=1e-7)
        else:  # codes: a value on a rounding boundary may go the other way on another device's arithmetic
            assert g.dtype == t.dtype and (g != t).float().mean() < 1e-3, k
    with torch.no_grad():
        torch.testing.assert_close(gpu(_ids().cuda()).cpu(), cpu(_ids()), atol=1e-3, rtol=0)


def test_streamed_load_keeps_ties_and_parity(tied_dir):
    model = Transformer.from_pretrained(tied_dir)
    assert model.lm_head.weight is model.embed.weight
    hf = transformers.AutoModelForCausalLM.from_pretrained(tied_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        torch.testing.assert_close(model(_ids()), hf_logits(hf, _ids()), atol=1e-4, rtol=0)


def test_tied_head_stays_full_precision_and_tied(tied_dir):
    with pytest.warns(UserWarning, match=r"lm_head \(weight tied"):
        model = Transformer.from_pretrained(tied_dir, quantize="nf4", quant_options={"skip": ()})
    assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight is model.embed.weight
    assert isinstance(model.layers[0].mlp.up_proj, QuantizedLinear)


def test_tied_config_with_a_stored_lm_head(tied_dir, tmp_path):
    """A stored lm_head.weight equal to the embedding changes nothing (still tied); one with other values is kept,
    untied, with a warning, as transformers 5 loads such a folder."""
    sd = load_file(tied_dir / "model.safetensors")
    assert "lm_head.weight" not in sd  # tied: written once
    (tmp_path / "config.json").write_text((tied_dir / "config.json").read_text())
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
    save_file(sd, tmp_path / "model.safetensors")
    model = Transformer.from_pretrained(tmp_path)
    assert model.lm_head.weight is model.embed.weight
    sd["lm_head.weight"] = torch.zeros_like(sd["model.embed_tokens.weight"])
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.warns(UserWarning, match="lm_head.weight differs"):
        model = Transformer.from_pretrained(tmp_path)
    assert not model.config.tie_embeddings and model.lm_head.weight is not model.embed.weight
    assert not model.lm_head.weight.any()
    torch.testing.assert_close(model.embed.weight, sd["model.embed_tokens.weight"], rtol=0, atol=0)


def test_untied_config_needs_lm_head(qwen2_dir, tmp_path):
    sd = load_file(qwen2_dir / "model.safetensors")
    del sd["lm_head.weight"]
    save_file(sd, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((qwen2_dir / "config.json").read_text())
    with pytest.raises(ValueError, match=r"missing \['lm_head.weight'\]"):
        Transformer.from_pretrained(tmp_path)


def test_one_name_map_both_ways(qwen2_dir):
    hf_keys = list(load_file(qwen2_dir / "model.safetensors"))
    assert all(to_hf_name(from_hf_name(k)) == k for k in hf_keys)
    model = quantize_model(Transformer.from_pretrained(qwen2_dir), "nf4", skip=())
    mine = list(model.state_dict())  # buffers of the quantized layers included
    assert any(k.endswith("weight_data") for k in mine)
    assert all(from_hf_name(to_hf_name(k)) == k for k in mine)
    assert from_hf_name("layers.0.self_attn.q_proj.weight") == "layers.0.attn.q_proj.weight"  # bare LlamaModel
    with pytest.raises(ValueError, match="pos_emb.weight"):
        to_hf_name("pos_emb.weight")


# --- export of a quantized model ---------------------------------------------------------------------------

def test_save_pretrained_refuses_a_quantized_model(qwen2_dir, tmp_path):
    model = Transformer.from_pretrained(qwen2_dir, quantize="nf4")
    with pytest.raises(ValueError, match=r"quantized layers.*save_quantized.*dequantize=True"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="to_hf"):
        model.to_hf()


def test_save_pretrained_dequantized_is_what_the_quantized_model_computes(qwen2_dir, tmp_path):
    model = Transformer.from_pretrained(qwen2_dir, quantize="nf4")
    with pytest.warns(UserWarning, match="dequantized"):
        model.save_pretrained(tmp_path, dequantize=True)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        noted = json.loads(f.metadata()["mlcore_dequantized"])
    assert noted["layers.0.attn.q_proj"] == "nf4" and len(noted) == 14
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf_logits(hf, _ids()), model(_ids()), atol=1e-4, rtol=0)
        torch.testing.assert_close(model.to_hf(dequantize=True)(_ids()).logits, model(_ids()), atol=1e-4, rtol=0)


def test_save_pretrained_refuses_lora_wrappers(tied_dir, tmp_path):
    from mlcore.finetune import LoraConfig, apply_lora

    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"])
    model = apply_lora(Transformer.from_pretrained(tied_dir), config)
    with pytest.raises(ValueError, match="merge_lora"):
        model.save_pretrained(tmp_path)


# --- memory --------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_streamed_quantized_load_peak_memory(tmp_path):
    """Peak RSS of each load, measured in a fresh process (_memory_probe.py): the streamed fp32 load peaks at
    about the model's own size (no second copy of the weights), and quantizing while loading stays far below
    it. Many small layers, so that the temporaries of quantizing the largest one weigh little."""
    config = TransformerConfig(vocab_size=512, d_model=256, n_layers=8, n_heads=4, n_kv_heads=2, max_seq_len=64)
    Transformer(config).save_pretrained(tmp_path)  # 6.2M parameters, 24 MiB in float32
    out = subprocess.run([sys.executable, str(PROBE), str(tmp_path), "nf4", "fp32"], capture_output=True,
                         text=True, timeout=240, check=True).stdout
    peaks = {r["mode"]: r for r in map(json.loads, out.strip().splitlines()[-2:])}
    fp32 = peaks["fp32"]["model_mb"]
    assert peaks["fp32"]["peak_mb"] < 1.15 * fp32, peaks
    assert peaks["nf4"]["peak_mb"] < 0.5 * fp32, peaks


# --- bad input -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["int3", "gptq", "NF4", 4])
def test_unknown_quantize_scheme(tied_dir, scheme):
    with pytest.raises(ValueError, match=r"quantize: expected None or one of"):
        Transformer.from_pretrained(tied_dir, quantize=scheme)


@pytest.mark.parametrize("options,match", [({"group_size": 64}, r"options: \['group_size'\]"),
                                           ({"skip": "lm_head"}, r"quant_options\['skip'\]"),
                                           ({"prefer": "fast"}, r"quant_options\['prefer'\]"),
                                           ([("blocksize", 64)], "quant_options: expected a dict")])
def test_bad_quant_options(tied_dir, options, match):
    with pytest.raises(ValueError, match=match):
        Transformer.from_pretrained(tied_dir, quantize="nf4", quant_options=options)


def test_quant_options_without_quantize(tied_dir):
    with pytest.raises(ValueError, match="quantize=None"):
        Transformer.from_pretrained(tied_dir, quant_options={"blocksize": 64})


@pytest.mark.parametrize("dtype", [torch.int8, "float32", None,
                                   torch.float8_e4m3fn])  # loaded, then failed in the first forward's norm
def test_bad_dtype(tied_dir, dtype):
    with pytest.raises(ValueError, match="dtype: expected a floating torch.dtype"):
        Transformer.from_pretrained(tied_dir, dtype=dtype)


@pytest.mark.parametrize(("device", "match"), [("gpu0", "device"),
                                               ("meta", "device: 'meta' holds no weights")])  # blamed the file
def test_bad_device(tied_dir, device, match):
    with pytest.raises(ValueError, match=match):
        Transformer.from_pretrained(tied_dir, device=device)


def test_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        Transformer.from_pretrained(tmp_path / "nowhere")


def _copy_config(src: Path, dst: Path) -> None:
    (dst / "config.json").write_text((src / "config.json").read_text())


def test_sharded_folder_errors(qwen2_dir, tmp_path):
    sd = load_file(qwen2_dir / "model.safetensors")
    _copy_config(qwen2_dir, tmp_path)
    names = sorted(sd)
    half = len(names) // 2
    save_file({k: sd[k] for k in names[:half]}, tmp_path / "a.safetensors")
    save_file({k: sd[k] for k in names[half:]}, tmp_path / "b.safetensors")
    index = {"weight_map": {k: ("a" if i < half else "b") + ".safetensors" for i, k in enumerate(names)}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    Transformer.from_pretrained(tmp_path)  # the well-formed folder loads
    index["weight_map"]["model.extra.weight"] = "a.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"lack tensors listed in the index: \['model.extra.weight'\]"):
        Transformer.from_pretrained(tmp_path)
    index["weight_map"] = {k: "c.safetensors" for k in names}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="names shard 'c.safetensors', which is missing"):
        Transformer.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid safetensors index"):
        Transformer.from_pretrained(tmp_path)


def test_extra_tensor_is_named(tied_dir, tmp_path):
    sd = load_file(tied_dir / "model.safetensors")
    sd["model.layers.0.self_attn.rotary_scale"] = torch.ones(3)
    save_file(sd, tmp_path / "model.safetensors")
    _copy_config(tied_dir, tmp_path)
    with pytest.raises(ValueError, match=r"unexpected \['model.layers.0.self_attn.rotary_scale'\]"):
        Transformer.from_pretrained(tmp_path)


def test_hidden_size_mismatch_is_named(tied_dir, tmp_path):
    cfg = json.loads((tied_dir / "config.json").read_text())
    cfg["intermediate_size"] += 64
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").write_bytes((tied_dir / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"'layers.0.mlp.gate_proj.weight'.*has shape \(192, 64\), the config "
                                         r"expects \(256, 64\)"):
        Transformer.from_pretrained(tmp_path)


def test_integer_tensor_where_a_weight_belongs(tied_dir, tmp_path):
    sd = load_file(tied_dir / "model.safetensors")
    key = "model.layers.1.mlp.down_proj.weight"
    sd[key] = sd[key].to(torch.int8)
    save_file(sd, tmp_path / "model.safetensors")
    _copy_config(tied_dir, tmp_path)
    with pytest.raises(ValueError, match=f"{key}.*not stored as floating point"):
        Transformer.from_pretrained(tmp_path)


def test_mlcore_quantized_file_is_not_an_hf_folder(tied_dir, tmp_path):
    model = quantize_model(Transformer.from_pretrained(tied_dir), "nf4")
    save_quantized(model, tmp_path / "model.safetensors")
    _copy_config(tied_dir, tmp_path)
    with pytest.raises(ValueError, match=r"mlcore quantized checkpoint .*load_quantized"):
        Transformer.from_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")  # the same tensors without the header's format note
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing \['embed.weight'.*unexpected \['embed.weight', .*weight_data"):
        Transformer.from_pretrained(tmp_path)


def test_impossible_fast_path_names_the_layer(tied_dir):
    with pytest.raises(ValueError, match=r"cannot quantize 'layers.0.attn.q_proj.weight'.*int4pack"):
        Transformer.from_pretrained(tied_dir, quantize="nf4", quant_options={"prefer": "int4pack"})


def test_non_finite_weight_named_when_quantizing(tied_dir, tmp_path):
    sd = load_file(tied_dir / "model.safetensors")
    sd["model.layers.0.mlp.up_proj.weight"][3, 5] = float("nan")
    save_file(sd, tmp_path / "model.safetensors")
    _copy_config(tied_dir, tmp_path)
    with pytest.raises(ValueError, match=r"cannot quantize 'layers.0.mlp.up_proj.weight'.*NaN"):
        Transformer.from_pretrained(tmp_path, quantize="int8")


def test_file_damaged_after_the_header_was_read(tied_dir, tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes((tied_dir / "model.safetensors").read_bytes())
    source = SafetensorsFolder(tmp_path, torch.device("cpu"))
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="could not read tensor .* \\(corrupt or truncated\\?\\)"):
        source.read(source.keys()[0])
