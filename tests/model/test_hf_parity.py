"""mlcore's Transformer against transformers' own models with the same weights (reference: HF logits)."""

from __future__ import annotations

import pytest
import torch
import transformers

from mlcore.model import Transformer

from ._model_testutils import VOCAB, gpt2, hf_logits, left_padded_batch, llama_family, randomize_

ATOL = 1e-4

LLAMA_CASES = {
    "gqa": dict(),
    "mqa": dict(num_key_value_heads=1),
    "mha_tied": dict(num_key_value_heads=4, tie_word_embeddings=True),
    "attention_bias": dict(attention_bias=True, mlp_bias=True),
    "rope_linear": dict(rope_scaling={"rope_type": "linear", "factor": 4.0}),
    "rope_dynamic": dict(max_position_embeddings=16, rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
    "rope_yarn": dict(max_position_embeddings=32,
                      rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 16}),
    "rope_llama3": dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    "head_dim_32": dict(head_dim=32, num_attention_heads=4, num_key_value_heads=2),
}


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _check(hf, ids, mask=None, mine=None):
    mine = mine or Transformer.from_hf(hf).eval()
    ref = hf_logits(hf, ids, mask)
    with torch.no_grad():
        got = mine(ids, attention_mask=mask)
    assert got.shape == ref.shape == (*ids.shape, VOCAB)
    assert ref.abs().max() > 1.0  # logits are not trivially small
    if mask is None:
        assert _max_err(got, ref) < ATOL
    else:
        keep = mask.bool()
        assert _max_err(got[keep], ref[keep]) < ATOL
    return mine


@pytest.mark.parametrize("case", sorted(LLAMA_CASES))
def test_llama_logits_match(case):
    hf = llama_family("llama", **LLAMA_CASES[case])
    T = 24  # longer than the 16 positions that the dynamic / yarn / llama3 cases were "trained" at
    ids = torch.randint(0, VOCAB, (2, T))
    mine = _check(hf, ids)
    padded_ids, mask = left_padded_batch([T, T - 7], T)
    _check(hf, padded_ids, mask, mine)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_left_padded_row_equals_unpadded_row(kind):
    hf = gpt2() if kind == "gpt2" else llama_family("llama")
    mine = Transformer.from_hf(hf).eval()
    ids, mask = left_padded_batch([12, 8], 12)
    with torch.no_grad():
        batched = mine(ids, attention_mask=mask)
        alone = mine(ids[1:, 4:])
        ref_no_positions = hf(ids, attention_mask=mask).logits  # plain HF forward: positions 0..T-1 regardless
    assert _max_err(batched[1, 4:], alone[0]) < ATOL
    if kind == "gpt2":
        # learned absolute positions: HF without position_ids gives other logits on the padded row. (RoPE is
        # relative, so for Llama a constant shift of all positions changes nothing but rounding.)
        assert _max_err(ref_no_positions[1, 4:], batched[1, 4:]) > 1e-2


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_mistral_sliding_window_shorter_than_sequence(attn):
    hf = llama_family("mistral", attn=attn, sliding_window=4)
    mine = Transformer.from_hf(hf).eval()
    assert mine.config.sliding_window == 4
    ids = torch.randint(0, VOCAB, (2, 16))
    _check(hf, ids, mine=mine)
    padded_ids, mask = left_padded_batch([16, 10], 16)
    _check(hf, padded_ids, mask, mine)
    # the window matters: the same weights with full attention give different logits late in the sequence
    full = llama_family("mistral", attn=attn, sliding_window=None)
    assert _max_err(hf_logits(full, ids)[:, 8:], hf_logits(hf, ids)[:, 8:]) > 1e-2


def test_qwen2_qkv_bias():
    hf = llama_family("qwen2")
    mine = Transformer.from_hf(hf).eval()
    assert mine.config.qkv_bias and not mine.config.out_bias
    _check(hf, torch.randint(0, VOCAB, (2, 20)), mine=mine)
    ids, mask = left_padded_batch([20, 13], 20)
    _check(hf, ids, mask, mine)


@pytest.mark.parametrize("activation", ["gelu_new", "gelu"])
def test_gpt2_logits_match(activation):
    hf = gpt2(activation_function=activation)
    mine = Transformer.from_hf(hf).eval()
    assert mine.config.position == "learned" and mine.config.norm == "layernorm"
    _check(hf, torch.randint(0, VOCAB, (2, 20)), mine=mine)
    ids, mask = left_padded_batch([20, 11], 20)
    _check(hf, ids, mask, mine)


def test_to_hf_round_trip_llama_gqa_untied():
    from mlcore.model import TransformerConfig

    cfg = TransformerConfig(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96,
                            max_seq_len=64, tie_embeddings=False, norm_eps=1e-6,
                            rope_scaling={"rope_type": "linear", "factor": 2.0})
    mine = randomize_(Transformer(cfg), seed=3)
    hf = mine.to_hf()
    assert type(hf).__name__ == "LlamaForCausalLM"
    _check(hf, torch.randint(0, VOCAB, (2, 20)), mine=mine)
    back = Transformer.from_hf(hf).eval()
    ids = torch.randint(0, VOCAB, (2, 20))
    with torch.no_grad():
        assert torch.equal(back(ids), mine(ids))


@pytest.mark.parametrize("style", ["llama_tied_bias", "mistral", "qwen2"])
def test_save_pretrained_loads_in_transformers(tmp_path, style):
    import transformers

    from mlcore.model import TransformerConfig

    extra = {"llama_tied_bias": dict(qkv_bias=True, out_bias=True, tie_embeddings=True),
             "mistral": dict(sliding_window=5, tie_embeddings=False),
             "qwen2": dict(qkv_bias=True, tie_embeddings=False)}[style]
    cfg = TransformerConfig(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=1, d_ff=96,
                            max_seq_len=64, norm_eps=1e-6, **extra)
    mine = randomize_(Transformer(cfg), seed=4)  # biases and norm gains too, so that each one counts
    mine.save_pretrained(tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    expected_cls = {"llama_tied_bias": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                    "qwen2": "Qwen2ForCausalLM"}[style]
    assert type(hf).__name__ == expected_cls
    ids, mask = left_padded_batch([16, 9], 16)
    _check(hf, ids, mask, mine)
    _check(hf, torch.randint(0, VOCAB, (2, 16)), mine=mine)
    reloaded = Transformer.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(reloaded(ids, attention_mask=mask), mine(ids, attention_mask=mask))


def test_qwen2_sliding_window_on_every_layer():
    hf = llama_family("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=0)
    mine = Transformer.from_hf(hf).eval()
    assert mine.config.sliding_window == 4
    _check(hf, torch.randint(0, VOCAB, (2, 16)), mine=mine)


@pytest.mark.parametrize("overrides", [dict(max_window_layers=1),
                                       dict(layer_types=["sliding_attention", "full_attention"])])
def test_qwen2_sliding_window_on_some_layers(tmp_path, overrides):
    hf = llama_family("qwen2", attn="sdpa", use_sliding_window=True, sliding_window=3, **overrides)
    mine = _check(hf, *left_padded_batch([20, 11], 20))
    assert [b.attn.sliding_window for b in mine.layers] == [3 if t == "sliding_attention" else None
                                                          for t in hf.config.layer_types]
    mine.save_pretrained(tmp_path)  # exported as Qwen2 with the same layer_types
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert back.config.layer_types == hf.config.layer_types
    _check(back, torch.randint(0, VOCAB, (1, 20)), mine=mine)


@pytest.mark.parametrize("activation", ["gelu_fast", "quick_gelu", "relu2", "tanh"])
def test_more_activations_match(activation):
    _check(llama_family("llama", hidden_act=activation), torch.randint(0, VOCAB, (1, 10)))
    _check(gpt2(activation_function=activation), torch.randint(0, VOCAB, (1, 10)))


def test_gpt2_untied_head(tmp_path):
    hf = gpt2(tie_word_embeddings=False)
    assert hf.lm_head.weight.data_ptr() != hf.transformer.wte.weight.data_ptr()
    _check(hf, *left_padded_batch([12, 5], 12))
    hf.save_pretrained(tmp_path)
    _check(hf, torch.randint(0, VOCAB, (1, 12)), mine=Transformer.from_pretrained(tmp_path))


def test_dynamic_rope_runs_past_factor_times_trained_length():
    hf = llama_family("llama", max_position_embeddings=8, rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    _check(hf, torch.randint(0, VOCAB, (1, 40)))  # 5x the trained length, 2.5x factor * length


@pytest.mark.parametrize("overrides", [dict(scale_attn_by_inverse_layer_idx=True), dict(scale_attn_weights=False),
                                       dict(reorder_and_upcast_attn=True)])
def test_gpt2_attention_scale_options(tmp_path, overrides):
    hf = gpt2(attn="sdpa", **overrides)
    _check(hf, *left_padded_batch([12, 7], 12))
    hf.save_pretrained(tmp_path)
    _check(hf, torch.randint(0, VOCAB, (1, 12)), mine=Transformer.from_pretrained(tmp_path))


def test_export_respects_layer_types():
    from mlcore.model import TransformerConfig

    cfg = TransformerConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, max_seq_len=32, sliding_window=3,
                            layer_types=["full_attention", "full_attention"])  # the window is never used
    mine = randomize_(Transformer(cfg)).eval()
    hf = mine.to_hf()
    assert type(hf).__name__ == "LlamaForCausalLM"
    _check(hf, torch.randint(0, VOCAB, (2, 20)), mine=mine)


def test_gpt2_float64_logits_match_to_float64_precision():
    """LayerNorm keeps a float64 input in float64, as torch's layer_norm (and so transformers' GPT-2) does; it used
    to round it through float32, an error near 1e-6 instead of 1e-13."""
    hf = gpt2().to(torch.float64)
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        err = _max_err(Transformer.from_hf(hf)(ids), hf_logits(hf, ids))
    assert err < 1e-10


@pytest.mark.parametrize("scaling", [{"type": "linear", "factor": 4.0}, {"type": "dynamic", "factor": 2.0}])
def test_export_of_transformers_4_rope_type_spelling(tmp_path, scaling):
    """rope_scaling spelled with transformers 4's "type" key (which mlcore's RoPE reads) is exported as
    "rope_type": it was written next to a default "rope_type", and transformers 5 ran unscaled RoPE."""
    from mlcore.model import TransformerConfig

    cfg = TransformerConfig(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96,
                            max_seq_len=64, norm_eps=1e-6, rope_scaling=scaling)
    if scaling["type"] == "dynamic":  # dynamic NTK changes the frequencies only past max_position_embeddings
        cfg.rope_max_position_embeddings = 16
    mine = randomize_(Transformer(cfg), seed=5)
    mine.save_pretrained(tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert hf.config.rope_parameters["rope_type"] == scaling["type"]
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(0))
    _check(hf, ids, mine=mine)
    _check(mine.to_hf(), ids, mine=mine)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_float64_llama_family_logits_match_transformers(arch):
    """HF's LlamaRMSNorm rounds a float64 input through float32; mlcore's float64 RMSNorm computed in float64 and
    gave logits ~1e-6 off a float64 transformers model (where HF eager and sdpa agree to 1e-15 on one token)."""
    hf = llama_family(arch, seed=3).double()
    mine = Transformer.from_hf(hf)
    ids = torch.randint(0, VOCAB, (2, 1), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (mine(ids) - hf(ids).logits).abs().max().item()
    assert diff < 1e-12, diff
