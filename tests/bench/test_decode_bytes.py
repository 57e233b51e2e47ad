"""The decode roofline's bytes per step against an independent count from the config
(``mlcore.model.accounting.count_parameters``) and against the tensor sizes llama.cpp's GGUF file stores."""

from __future__ import annotations

import pytest
import torch

from benchmarks._anchors_setup import weight_bytes as anchors_weight_bytes
from benchmarks._decode_setup import mean_decode_context, roofline_bytes, weight_bytes
from mlcore.model import Transformer, TransformerConfig, accounting

GPT2_STYLE = dict(position="learned", norm="layernorm", mlp="gelu", activation="gelu_tanh", qkv_bias=True,
                  out_bias=True, mlp_bias=True)


def _ideal(c: TransformerConfig, batch: int, itemsize: int) -> int:
    """Every block and the final norm, the whole vocabulary head, ``batch`` rows of an untied embedding and one
    row of a learned position table."""
    p = accounting.count_parameters(c)
    rows = (0 if c.tie_embeddings else min(batch, c.vocab_size)) + (c.position == "learned")
    return (p.attention + p.mlp + p.norms + c.vocab_size * c.d_model + rows * c.d_model) * itemsize


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("style", ["llama", "gpt2"])
def test_weight_bytes_read_one_row_of_each_lookup_table(tie, style):
    """A learned position table was counted whole (255 of 256 rows too many on this model)."""
    extra = GPT2_STYLE if style == "gpt2" else {"n_kv_heads": 2}
    c = TransformerConfig(vocab_size=320, d_model=64, n_layers=2, n_heads=4, max_seq_len=256, tie_embeddings=tie,
                          **extra)
    model = Transformer(c).eval()
    for dtype in (torch.float32, torch.bfloat16):
        model = model.to(dtype)
        assert weight_bytes(model) == anchors_weight_bytes(model) == _ideal(c, 1, dtype.itemsize)
        assert weight_bytes(model, batch=4) == _ideal(c, 4, dtype.itemsize)
        kv = 2 * c.n_layers * 4 * c.n_kv_heads * 40 * c.head_dim * dtype.itemsize
        assert roofline_bytes(model, 4, 40) == _ideal(c, 4, dtype.itemsize) + kv


def test_mean_decode_context_is_the_mean_over_the_timed_steps():
    """generate(N) - generate(1) times N - 1 steps; step i sees the prompt and i tokens (itself included)."""
    for prompt, new in ((64, 32), (1, 2), (7, 9)):
        assert mean_decode_context(prompt, new) == sum(prompt + i for i in range(1, new)) / (new - 1)


def test_llamacpp_weight_bytes_count_one_row_of_an_untied_embedding(tmp_path):
    """decode_weight_bytes said "one row" but counted none of an untied token_embd: 256 bytes below mlcore's
    count of the same f32 model; q8_0 rows are whole 34-byte blocks."""
    pytest.importorskip("gguf")
    from mlcore.bench.llamacpp import decode_weight_bytes, gguf_tensor_bytes
    from mlcore.model.gguf_export import save_gguf
    from mlcore.tokenizer import BPETokenizer

    text = "The quick brown fox jumps over the lazy dog. " * 8 + "Tokens, merges and ranks: a byte-level BPE. " * 8
    tok = BPETokenizer.train(text, 300, special_tokens=["<|endoftext|>"])
    for tie in (True, False):
        model = Transformer(TransformerConfig(vocab_size=320, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                              max_seq_len=128, tie_embeddings=tie)).eval()
        f32 = save_gguf(model, tmp_path / f"{tie}-f32.gguf", tokenizer=tok, dtype="f32")
        assert decode_weight_bytes(f32) == weight_bytes(model)
        q8 = save_gguf(model, tmp_path / f"{tie}-q8.gguf", tokenizer=tok, dtype="q8_0")
        sizes = gguf_tensor_bytes(q8)
        embed_row = 0 if tie else sizes["token_embd.weight"] // 320
        assert embed_row in (0, 2 * 34)  # 64 values = two q8_0 blocks of 32 codes + one f16 scale
        assert decode_weight_bytes(q8) == sum(sizes.values()) - (0 if tie else sizes["token_embd.weight"]) + embed_row
