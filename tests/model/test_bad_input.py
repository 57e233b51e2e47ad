"""Bad input gives clear errors: unsupported architectures and fields, too-long sequences, vocab mismatches."""

from __future__ import annotations

import pytest
import torch
import transformers

from mlcore.model import Transformer, TransformerConfig
from mlcore.model.hf_convert import config_from_hf

from ._model_testutils import VOCAB, gpt2, llama_family


def test_unsupported_architecture_names_supported_ones():
    cfg = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, vocab_size=VOCAB)
    headless = transformers.LlamaModel(cfg)  # no LM head
    with pytest.raises(ValueError, match="LlamaModel.*GPT2LMHeadModel.*LlamaForCausalLM"):
        Transformer.from_hf(headless)
    with pytest.raises(ValueError, match="FalconForCausalLM.*supported"):
        config_from_hf({"architectures": ["FalconForCausalLM"], "model_type": "falcon"})


@pytest.mark.parametrize("kind,overrides,match", [
    ("llama", dict(hidden_act="gelu_10"), "hidden_act"),
    ("gpt2", dict(add_cross_attention=True), "add_cross_attention"),
])
def test_unimplemented_config_fields_are_refused(kind, overrides, match):
    hf = gpt2(**overrides) if kind == "gpt2" else llama_family(kind, **overrides)
    with pytest.raises(ValueError, match=match):
        Transformer.from_hf(hf)


def test_partial_rotary_factor_is_refused():
    d = llama_family("llama").config.to_dict()
    d["architectures"] = ["LlamaForCausalLM"]
    d["rope_parameters"] = {**d["rope_parameters"], "partial_rotary_factor": 0.5}
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        config_from_hf(d)


def test_sequence_longer_than_max_positions():
    model = Transformer(TransformerConfig(vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=2, max_seq_len=8))
    model(torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="max_seq_len=8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    gpt = Transformer.from_hf(gpt2(n_positions=16))
    with pytest.raises(ValueError, match="max_seq_len=16"):
        gpt(torch.zeros(1, 17, dtype=torch.long))


def test_token_ids_outside_vocab():
    model = Transformer(TransformerConfig(vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=2, max_seq_len=8))
    with pytest.raises(ValueError, match="vocab_size=128"):
        model(torch.tensor([[1, 2, VOCAB]]))
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 5))


@pytest.mark.parametrize("call,match", [
    (lambda m: m([[1, 2, 3]]), "input_ids"),                                       # a list, not a tensor
    (lambda m: m(torch.zeros(2, 3)), "input_ids"),                                 # float ids
    (lambda m: m(torch.zeros(0, 3, dtype=torch.long)), "input_ids"),               # empty batch
    (lambda m: m(torch.zeros(1, 3, dtype=torch.long), attention_mask=[[1, 1, 1]]), "attention_mask"),
    (lambda m: m(torch.zeros(1, 3, dtype=torch.long), attention_mask=torch.tensor([[0, 2, 1]])), "attention_mask"),
])
def test_bad_forward_arguments_name_the_argument(call, match):
    model = Transformer(TransformerConfig(vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=2, max_seq_len=8))
    with pytest.raises(ValueError, match=match):
        call(model)


@pytest.mark.parametrize("field,value", [("n_kv_heads", 3), ("norm", "batchnorm"), ("mlp", "moe"),
                                         ("position", "sinusoidal-3d"), ("d_model", 0)])
def test_bad_config_values(field, value):
    with pytest.raises(ValueError, match=field):
        TransformerConfig(**{"vocab_size": VOCAB, "d_model": 64, "n_heads": 4, field: value})


def test_export_refuses_non_llama_family():
    model = Transformer.from_hf(gpt2())
    with pytest.raises(ValueError, match="Llama-family"):
        model.to_hf()


@pytest.mark.parametrize("kw", [dict(sliding_window=2.5), dict(n_kv_heads="2"), dict(head_dim=0), dict(d_ff=True),
                                dict(sliding_window=0)])
def test_config_refuses_non_int_sizes(kw):
    name = next(iter(kw))
    with pytest.raises(ValueError, match=f"TransformerConfig.{name} must be a positive int"):
        TransformerConfig(**kw)


def test_forward_refuses_a_transformers_cache():
    import transformers

    model = Transformer(TransformerConfig(vocab_size=32, d_model=32, n_layers=1, n_heads=2, max_seq_len=16))
    with pytest.raises(ValueError, match="transformers DynamicCache.*mlcore"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=transformers.DynamicCache())


def test_logits_to_keep_returns_the_last_rows():
    model = Transformer(TransformerConfig(vocab_size=32, d_model=32, n_layers=1, n_heads=2, max_seq_len=16))
    ids = torch.randint(0, 32, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, last = model(ids), model(ids, logits_to_keep=1)
    assert last.shape == (2, 1, 32)
    torch.testing.assert_close(last, full[:, -1:])
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(ids, logits_to_keep=-1)


@pytest.mark.parametrize("kind,field,value", [
    ("llama", "num_attention_heads", 0),          # was a ZeroDivisionError (hidden_size // heads)
    ("llama", "hidden_size", "abc"),              # was "invalid literal for int()", without the field
    ("llama", "rms_norm_eps", float("nan")),      # was accepted: NaN logits
    ("llama", "rope_parameters", 3),              # was "'int' object is not iterable"
    ("llama", "max_position_embeddings", None),   # was "int() argument must be ... not 'NoneType'"
    ("qwen2", "max_window_layers", -1),
    ("gpt2", "layer_norm_epsilon", float("nan")),
    ("gpt2", "n_head", [4]),
    ("gpt2", "scale_attn_weights", "false"),      # was read as True (bool("false")): logits off by ~20
    ("qwen2", "use_sliding_window", "false"),     # was read as True: a window where none was meant
    ("llama", "tie_word_embeddings", 0),
    ("llama", "attention_bias", "false"),
    ("qwen2", "layer_types", 2.0),                # was "object of type 'float' has no len()"
])
def test_bad_config_json_values_name_the_field(kind, field, value):
    """A config.json value of the wrong type or range is refused with a ValueError naming the field (transformers'
    strict config classes refuse these too), never a deep error or NaN logits."""
    hf = gpt2() if kind == "gpt2" else llama_family(kind)
    d = hf.config.to_dict()
    d["architectures"] = [type(hf).__name__]
    d.pop("head_dim", None)  # head_dim then comes from hidden_size // num_attention_heads
    d[field] = value
    with pytest.raises(ValueError, match=field):
        config_from_hf(d)
