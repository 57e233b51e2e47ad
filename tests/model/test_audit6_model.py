"""Sixth audit of the decoder against transformers (Llama, Mistral, Qwen2, GPT-2): half-precision roundings,
``logits_to_keep`` as a tensor, ``from_pretrained(dtype="auto")``. Each test failed on the code before the fix."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from transformers.activations import ACT2FN
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

import mlcore.attention.multihead as multihead
from mlcore.model import LayerNorm, Transformer, TransformerConfig
from mlcore.model.hf_convert import _ACTIVATIONS, config_to_hf
from mlcore.model.mlp import ACTIVATIONS
from mlcore.positional import RotaryEmbedding, apply_rotary
from mlcore.positional.rope import apply_rotary_tables, rotary_tables

from ._model_testutils import VOCAB, gpt2, llama_family, randomize_

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(_ACTIVATIONS))
def test_every_accepted_activation_is_transformers_formula_bit_for_bit(name, dtype):
    """gelu_pytorch_tanh (torch's fused kernel), gelu_fast and gelu_python were read as mlcore's written-out tanh
    GELU / fused erf GELU: equal only up to rounding (~40% of bfloat16 outputs one rounding off)."""
    x = (torch.randn(20_000, generator=torch.Generator().manual_seed(0)) * 4).to(dtype)
    assert torch.equal(ACTIVATIONS[_ACTIVATIONS[name]](x), ACT2FN[name](x))


def test_to_hf_names_written_out_tanh_gelu_gelu_new():
    """mlcore's "gelu_tanh" is transformers' gelu_new; it was exported as gelu_pytorch_tanh (another rounding)."""
    cfg = TransformerConfig(vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=4, activation="gelu_tanh")
    assert config_to_hf(cfg)["hidden_act"] == "gelu_new"
    fused = TransformerConfig(vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=4, activation="gelu_pytorch_tanh")
    assert config_to_hf(fused)["hidden_act"] == "gelu_pytorch_tanh"
    mine = randomize_(Transformer(cfg), seed=3).to(torch.bfloat16)
    hf = mine.to_hf()
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(mine.layers[0].mlp.act(x), hf.model.layers[0].mlp.act_fn(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_layer_norm_is_torch_kernel_bit_for_bit(dtype):
    """The written-out LayerNorm summed mean and variance in another order than ``nn.LayerNorm`` (GPT-2's norm in
    transformers): ~56% of float32 outputs and ~1 in 20,000 bfloat16 outputs were one rounding off."""
    g = torch.Generator().manual_seed(0)
    ref = torch.nn.LayerNorm(96, eps=1e-5).to(dtype)
    with torch.no_grad():
        ref.weight.normal_(1.0, 0.2, generator=g)
        ref.bias.normal_(0.0, 0.2, generator=g)
    mine = LayerNorm(96, 1e-5).to(dtype)
    mine.load_state_dict(ref.state_dict())
    x = (torch.randn(64, 9, 96, generator=g) * 3 + 1).to(dtype)
    with torch.no_grad():
        assert torch.equal(mine(x), ref(x))
        torch.testing.assert_close(mine.reference(x), ref(x))  # the formula: the same up to rounding


def test_layer_norm_with_parameters_in_another_dtype_still_runs():
    """torch's kernel refuses float32 input with bfloat16 parameters; the written-out formula takes over."""
    ln = LayerNorm(8).to(torch.bfloat16)
    x = torch.randn(2, 8)
    assert ln(x).dtype == torch.float32
    torch.testing.assert_close(ln(x), ln.reference(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rope_rounds_half_inputs_as_transformers(dtype):
    """transformers rotates in x's dtype with cos/sin rounded to it; mlcore rotated in float32 and rounded once:
    ~1 in 4 rotated bfloat16 elements was one rounding off HF's."""
    g = torch.Generator().manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=16, max_position_embeddings=64)
    hf_rope = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config)
    q = (torch.randn(2, 4, 20, 16, generator=g) * 3).to(dtype)
    k = (torch.randn(2, 2, 20, 16, generator=g) * 3).to(dtype)
    pos = torch.stack([torch.arange(20), torch.arange(20) + 37])
    ref_q, ref_k = apply_rotary_pos_emb(q, k, *hf_rope(q, pos))
    cos, sin = RotaryEmbedding(16, max_position_embeddings=64)(pos)
    assert torch.equal(apply_rotary(q, cos, sin), ref_q)
    assert torch.equal(apply_rotary(k, cos, sin), ref_k)
    tables = rotary_tables(cos, sin, dtype=torch.float32)  # the model's per-forward tables stay float32
    assert torch.equal(apply_rotary_tables(q, *tables), ref_q)
    assert torch.equal(apply_rotary_tables(k, *tables), ref_k)


def _hf_eager_kernel(gpt2_softmax: bool):
    """transformers' eager attention (bf16 / fp16 matmuls, softmax in float32 for the Llama family and in the
    model's dtype for GPT-2), as a drop-in for mlcore's attention kernel: it isolates everything else."""

    def kernel(q, k, v, *, attn_mask=None, is_causal=False, dropout_p=0.0, return_weights=False):
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        scores = torch.matmul(q, k.transpose(2, 3)) * q.shape[-1] ** -0.5
        Tq, Tk = scores.shape[-2:]
        bias = torch.zeros(Tq, Tk)
        if is_causal:
            bias = bias.masked_fill(torch.ones(Tq, Tk, dtype=torch.bool).triu(Tk - Tq + 1), float("-inf"))
        if attn_mask is not None:
            bias = bias + (attn_mask.float() if attn_mask.dtype != torch.bool
                           else torch.zeros(attn_mask.shape).masked_fill(~attn_mask, float("-inf")))
        scores = scores + bias.clamp(min=torch.finfo(q.dtype).min).to(q.dtype)
        weights = (torch.softmax(scores, -1) if gpt2_softmax else torch.softmax(scores, -1, dtype=torch.float32))
        return torch.matmul(weights.to(q.dtype), v)

    return kernel


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_half_precision_logits_equal_transformers_but_for_the_attention_kernel(monkeypatch, arch, dtype):
    """With transformers' eager attention kernel in place of mlcore's (float32) one, bf16 / fp16 logits equal a
    transformers model created in that dtype bit for bit: norms, RoPE, activations and projections round alike
    (before: RoPE, LayerNorm and gelu_pytorch_tanh each rounded differently)."""
    if arch == "gpt2":
        ref32 = gpt2(activation_function="gelu_new")
        hf = transformers.GPT2LMHeadModel._from_config(ref32.config, attn_implementation="eager", dtype=dtype)
    else:
        ref32 = llama_family(arch, hidden_act="gelu_pytorch_tanh")
        hf = type(ref32)._from_config(ref32.config, attn_implementation="eager", dtype=dtype)
    hf.load_state_dict(ref32.state_dict())  # created in dtype, as from_pretrained makes it: inv_freq stays float32
    hf.eval()
    mine = Transformer.from_hf(hf)
    monkeypatch.setattr(multihead, "scaled_dot_product_attention", _hf_eager_kernel(arch == "gpt2"))
    ids = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = hf(ids).logits
    got = mine(ids).detach()  # grad mode: the plain layers, not the inference-time stacked copies
    assert got.dtype == dtype
    if arch == "gpt2":
        # GPT-2's Conv1D multiplies by its (in, out) weight, nn.Linear by the transpose of an (out, in) one. On a
        # CPU without native float16 arithmetic (an AVX-512 EPYC, unlike a Xeon with AVX512-FP16) torch's
        # float16 GEMM sums in an order that depends on that layout, so the two round differently (a few ulps)
        # though the formula is the same. Same values, first: then the same layout, where the bits must agree.
        torch.testing.assert_close(got, ref, atol=2e-2, rtol=1e-2)
        for name, module in mine.named_modules():
            if isinstance(module, torch.nn.Linear) and name != "lm_head":  # GPT-2's head is a plain Linear too
                module.weight.data = module.weight.data.t().contiguous().t()  # Conv1D's (in, out) storage
        got = mine(ids).detach()
    assert torch.equal(got, ref)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_logits_to_keep_tensor_of_positions_as_transformers(arch):
    """transformers takes ``logits_to_keep`` as a 1-D tensor of positions too; mlcore refused it."""
    hf = gpt2() if arch == "gpt2" else llama_family("llama")
    mine = Transformer.from_hf(hf)
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    for keep in (torch.tensor([0, 3, 8]), torch.tensor([-1, 2, 2]), torch.tensor([5], dtype=torch.int32),
                 torch.tensor([], dtype=torch.long)):
        with torch.no_grad():
            ref = hf(ids, logits_to_keep=keep).logits
            got = mine(ids, logits_to_keep=keep)
        assert got.shape == ref.shape == (2, len(keep), VOCAB)
        if len(keep):
            torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("keep", "match"), [
    (torch.tensor([9]), r"\[-9, 9\)"), (torch.tensor([-10]), r"\[-9, 9\)"), (torch.tensor([[1]]), "1-D"),
    (torch.ones(9, dtype=torch.bool), "1-D int64"), (torch.tensor([1], dtype=torch.uint8), "1-D int64"),
    (torch.tensor([1.0]), "1-D int64"), (1.5, "logits_to_keep"), (-1, "logits_to_keep")])
def test_bad_logits_to_keep_is_named(keep, match):
    mine = Transformer(TransformerConfig(vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=4, max_seq_len=16))
    with pytest.raises(ValueError, match=match):
        mine(torch.zeros(1, 9, dtype=torch.long), logits_to_keep=keep)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_from_pretrained_dtype_auto_reads_a_transformers_folder_in_its_dtype(tmp_path, dtype):
    """``AutoModelForCausalLM.from_pretrained`` (transformers 5) loads a folder in the dtype it was saved in;
    mlcore refused ``dtype="auto"``. A sharded bf16 folder written by transformers loads in bf16 with its logits."""
    hf = llama_family("qwen2", attn="eager").to(dtype)
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    mine = Transformer.from_pretrained(tmp_path, dtype="auto")
    assert ref.dtype == dtype and mine.embed.weight.dtype == dtype
    assert all(p.dtype == dtype for p in mine.parameters())
    ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        err = (mine(ids).float() - ref(ids).logits.float()).abs().max().item()
    assert err < (1e-4 if dtype == torch.float32 else 0.25)  # half precision: HF's own eager vs sdpa spread


def test_dtype_auto_without_a_config_dtype_takes_the_weights_dtype(tmp_path):
    hf = llama_family("llama").to(torch.float16)
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("dtype", None)
    cfg["torch_dtype"] = None
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert Transformer.from_pretrained(tmp_path, dtype="auto").embed.weight.dtype == torch.float16
    cfg["torch_dtype"] = "bfloat16"  # the older spelling of the field
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert Transformer.from_pretrained(tmp_path, dtype="auto").embed.weight.dtype == torch.bfloat16
    cfg["torch_dtype"] = "float33"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="torch_dtype"):
        Transformer.from_pretrained(tmp_path, dtype="auto")
    with pytest.raises(ValueError, match="dtype: expected"):
        Transformer.from_pretrained(tmp_path, dtype="bfloat16")  # names are not dtypes; "auto" is the one word


def test_qwen2_sliding_layer_types_without_a_window_are_refused_by_name():
    """transformers 5.25's Qwen2 fails in its forward on this config (no window for its sliding layers); mlcore used
    to run every layer with full attention, a guess no reference confirms."""
    from mlcore.model.hf_convert import config_from_hf

    d = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 50, "hidden_size": 16,
         "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
         "max_position_embeddings": 64, "use_sliding_window": False, "sliding_window": 4,
         "layer_types": ["sliding_attention", "full_attention"]}
    with pytest.raises(ValueError, match="layer_types marks sliding_attention layers but use_sliding_window=False"):
        config_from_hf(d)
    d["use_sliding_window"] = True
    assert config_from_hf(d).layer_types == ["sliding_attention", "full_attention"]
