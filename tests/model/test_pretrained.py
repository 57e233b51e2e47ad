"""Reading HF folders written by transformers' own save_pretrained; bad folders give clear errors."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from mlcore.model import Transformer

from ._model_testutils import VOCAB, gpt2, hf_logits, llama_family


def _assert_same_logits(hf, mine, T=12):
    ids = torch.randint(0, VOCAB, (2, T))
    with torch.no_grad():
        err = (mine(ids) - hf_logits(hf, ids)).abs().max().item()
    assert err < 1e-4


@pytest.mark.parametrize("kind", ["llama", "gpt2", "qwen2"])
def test_from_pretrained_reads_hf_folder(tmp_path, kind):
    hf = gpt2() if kind == "gpt2" else llama_family(kind)
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    _assert_same_logits(hf, Transformer.from_pretrained(tmp_path))


def test_from_pretrained_reads_sharded_folder(tmp_path):
    hf = llama_family("llama", tie_word_embeddings=False)
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    _assert_same_logits(hf, Transformer.from_pretrained(tmp_path))


@pytest.fixture
def llama_folder(tmp_path):
    llama_family("llama").save_pretrained(tmp_path)
    return tmp_path


def test_missing_weights_file(llama_folder):
    (llama_folder / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no weights"):
        Transformer.from_pretrained(llama_folder)


def test_pickled_weights_are_refused(llama_folder):
    sd = load_file(llama_folder / "model.safetensors")
    (llama_folder / "model.safetensors").unlink()
    torch.save(sd, llama_folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="safetensors only"):
        Transformer.from_pretrained(llama_folder)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors(llama_folder, damage):
    path = llama_folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x07" * 64)
    with pytest.raises(ValueError, match="corrupt"):
        Transformer.from_pretrained(llama_folder)


def test_missing_tensor_is_named(llama_folder):
    path = llama_folder / "model.safetensors"
    sd = load_file(path)
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, path)
    with pytest.raises(ValueError, match=r"layers\.1\.mlp\.up_proj\.weight"):
        Transformer.from_pretrained(llama_folder)


def test_vocab_mismatch_between_config_and_weights(llama_folder):
    cfg = json.loads((llama_folder / "config.json").read_text())
    cfg["vocab_size"] = VOCAB + 2
    (llama_folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="vocab_size"):
        Transformer.from_pretrained(llama_folder)


def test_missing_config(llama_folder):
    (llama_folder / "config.json").unlink()
    with pytest.raises(ValueError, match="config.json"):
        Transformer.from_pretrained(llama_folder)


def test_unknown_config_field_is_refused(llama_folder):
    cfg = json.loads((llama_folder / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq"}
    (llama_folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="quantization_config"):
        Transformer.from_pretrained(llama_folder)


def test_from_pretrained_dtype(llama_folder):
    model = Transformer.from_pretrained(llama_folder, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not model.training


def test_project_tiny_target_matches_transformers():
    """The project's trained model (an HF folder written by save_pretrained) gives the same logits in both."""
    import transformers

    from mlcore.training.assets import tiny_dir

    folder = tiny_dir() / "target"
    if not (folder / "model.safetensors").is_file():
        pytest.skip("tiny target model not built (python -m mlcore.training.pretrain --preset tiny)")
    mine = Transformer.from_pretrained(folder)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                           attn_implementation="eager").eval()
    ids = torch.randint(0, mine.config.vocab_size, (2, 64))
    with torch.no_grad():
        err = (mine(ids) - hf(ids).logits).abs().max().item()
    assert err < 1e-4


def test_old_config_json_with_generation_defaults(tmp_path):
    hf = gpt2()
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(max_length=20, do_sample=True, temperature=0.7, pruned_heads={}, use_bfloat16=False)  # v4 files
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, VOCAB, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(Transformer.from_pretrained(tmp_path)(ids), back(ids).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_tied_config_with_a_different_stored_head_keeps_it(tmp_path, kind):
    """config.json says tie_word_embeddings, but the file's lm_head.weight differs from the embedding: transformers
    keeps both (and warns); so do from_pretrained and from_hf, with the same logits."""
    src = llama_family("llama", tie_word_embeddings=False) if kind == "llama" else gpt2(tie_word_embeddings=False)
    src.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["tie_word_embeddings"] = True
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(hf.lm_head.weight, src.lm_head.weight)  # the reference kept the stored head
    with pytest.warns(UserWarning, match="lm_head.weight differs"):
        mine = Transformer.from_pretrained(tmp_path)
    assert not mine.config.tie_embeddings
    _assert_same_logits(hf, mine)
    with pytest.warns(UserWarning, match="lm_head.weight differs"):
        _assert_same_logits(hf, Transformer.from_hf(hf))
    tied = llama_family("llama", tie_word_embeddings=True) if kind == "llama" else gpt2()
    assert Transformer.from_hf(tied).config.tie_embeddings  # a really tied model stays tied


def test_config_json_defaults_are_transformers(tmp_path):
    """Fields a config.json may leave out get transformers' defaults: Mistral's 4096-token window, the maximum
    positions of each family."""
    src = llama_family("mistral", sliding_window=4096, max_position_embeddings=8192)
    src.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["sliding_window"], cfg["max_position_embeddings"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    mine = Transformer.from_pretrained(tmp_path)
    assert mine.config.sliding_window == hf.config.sliding_window == 4096
    assert mine.config.max_seq_len == hf.config.max_position_embeddings


def test_mistral_ignores_layer_types_as_transformers_does():
    """MistralForCausalLM slides every layer when sliding_window is set, even if its config lists layer_types."""
    ids = torch.randint(0, VOCAB, (1, 16), generator=torch.Generator().manual_seed(0))
    for types in (["sliding_attention", "full_attention"], ["full_attention", "full_attention"]):
        hf = llama_family("mistral", sliding_window=3, layer_types=types)
        mine = Transformer.from_hf(hf)
        assert mine.config.sliding_window == 3 and mine.config.layer_types is None
        with torch.no_grad():
            assert (mine(ids) - hf(ids).logits).abs().max() < 1e-4


@pytest.mark.parametrize("overrides", [dict(scale_attn_weights=False, n_head=2),   # factor sqrt(32): not a power of 2
                                       dict(scale_attn_by_inverse_layer_idx=True, n_layer=3)])  # factor 1/3
def test_gpt2_half_checkpoint_with_score_scaling_loads_in_float32(tmp_path, overrides):
    """The score scalings folded into q_proj are applied in float32, not in the file's bfloat16: a float32 load
    gives transformers' float32 logits (scaling in bfloat16 first rounded the folded weight: errors near 0.1)."""
    gpt2(**overrides).to(torch.bfloat16).save_pretrained(tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    _assert_same_logits(hf, Transformer.from_pretrained(tmp_path, dtype=torch.float32))


@pytest.mark.parametrize("model_type,kind,overrides", [
    ("mistral", "mistral", dict(sliding_window=4)),   # was refused: "llama: config fields ['sliding_window']"
    ("qwen2", "qwen2", {}),
    ("llama", "llama", dict(attention_bias=True)),
])
def test_model_type_decides_over_architectures(tmp_path, model_type, kind, overrides):
    """A config.json whose ``architectures`` names another family than its ``model_type`` is read by
    ``model_type``, as AutoModelForCausalLM does (its config class picks the model class)."""
    llama_family(kind, **overrides).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == model_type
    cfg["architectures"] = ["MistralForCausalLM" if kind == "llama" else "LlamaForCausalLM"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(hf).__name__.lower().startswith(kind)
    _assert_same_logits(hf, Transformer.from_pretrained(tmp_path))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_tied_checkpoint_storing_only_the_head(tmp_path, kind):
    """A tied checkpoint whose shared matrix is stored as lm_head.weight only: transformers ties it back into the
    input embedding, and so does mlcore (it was refused: "missing ['embed.weight']")."""
    src = gpt2() if kind == "gpt2" else llama_family("llama", tie_word_embeddings=True)
    src.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    embed = "transformer.wte.weight" if kind == "gpt2" else "model.embed_tokens.weight"
    sd["lm_head.weight"] = sd.pop(embed)
    save_file(sd, tmp_path / "model.safetensors", metadata={"format": "pt"})
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    mine = Transformer.from_pretrained(tmp_path)
    assert mine.config.tie_embeddings and mine.lm_head.weight is mine.embed.weight
    _assert_same_logits(hf, mine)
    _assert_same_logits(src, mine)


def test_null_rope_theta_and_bad_index_entries_are_named(tmp_path):
    """A null RoPE base with no number elsewhere (transformers fails in RoPE with a TypeError) and an index mapping
    a tensor to a non-string file were deep TypeErrors; both are ValueErrors naming what is wrong."""
    llama_family("llama").save_pretrained(tmp_path, max_shard_size="20KB")
    cfg = json.loads((tmp_path / "config.json").read_text())
    for rope in ({**cfg["rope_parameters"], "rope_theta": None}, None):
        bad = {**cfg, "rope_parameters": rope, "rope_theta": None}
        (tmp_path / "config.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="rope_theta is null"):
            Transformer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    index = tmp_path / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"][next(iter(data["weight_map"]))] = 5
    index.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="index.json is not a valid safetensors index.*5"):
        Transformer.from_pretrained(tmp_path)
