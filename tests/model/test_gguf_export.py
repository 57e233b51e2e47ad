"""GGUF export: the file read back with ``gguf.GGUFReader`` (the reader llama.cpp's tools use) holds the right
metadata, shapes and values; q/k rows are in llama.cpp's interleaved RoPE layout; Q8_0 / Q4_0 blocks decode
(by hand, from the bytes) to the weights within half a quantization step."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from mlcore.model import Transformer, TransformerConfig  # noqa: E402
from mlcore.model.gguf_export import GGUF_DTYPES, gguf_tensors, save_gguf, tokenizer_metadata  # noqa: E402
from mlcore.positional import interleaved_to_half  # noqa: E402
from mlcore.tokenizer import GPT2_PATTERN, BPETokenizer  # noqa: E402
from mlcore.tokenizer.export import to_hf_json  # noqa: E402

TEXT = ("The quick brown fox jumps over the lazy dog. " * 8 + "Tokens, merges and ranks: a byte-level BPE. " * 8
        + "def f(x):\n    return x + 1\n\n" * 6)


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    return BPETokenizer.train(TEXT, 300, special_tokens=["<|endoftext|>"])


def _model(tie: bool = True, **kw) -> Transformer:
    g = torch.Generator().manual_seed(1)
    cfg = TransformerConfig(vocab_size=320, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64,
                            tie_embeddings=tie, rope_theta=5000.0, norm_eps=1e-6, **kw)
    m = Transformer(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m


def _fields(reader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items()}


def _meta_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py ``LlamaModel.permute``: rotate-half rows -> interleaved, per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_metadata_and_f32_values(tmp_path, tokenizer):
    m = _model()
    path = save_gguf(m, tmp_path / "m.gguf", tokenizer=tokenizer, dtype="f32", name="tiny")
    r = gguf.GGUFReader(path)
    f = _fields(r)
    c = m.config
    expected = {"general.architecture": "llama", "general.name": "tiny", "general.file_type": 0,
                "llama.block_count": 2, "llama.embedding_length": 64, "llama.feed_forward_length": c.d_ff,
                "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2, "llama.context_length": 64,
                "llama.rope.dimension_count": 16, "llama.vocab_size": 320, "tokenizer.ggml.model": "gpt2",
                "tokenizer.ggml.pre": "llama-bpe", "tokenizer.ggml.eos_token_id": 299,
                "tokenizer.ggml.add_bos_token": False}
    for key, value in expected.items():
        assert f[key] == value, key
    assert f["llama.rope.freq_base"] == pytest.approx(5000.0)
    assert f["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert len(f["tokenizer.ggml.tokens"]) == 320 and len(f["tokenizer.ggml.token_type"]) == 320

    tensors = {t.name: t for t in r.tensors}
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    assert len(tensors) == 2 + 9 * 2
    sd = m.state_dict()
    for i in range(2):
        for ours, theirs in (("attn.v_proj", "attn_v"), ("attn.o_proj", "attn_output"), ("mlp.gate_proj", "ffn_gate"),
                             ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down"), ("attn_norm", "attn_norm"),
                             ("mlp_norm", "ffn_norm")):
            t = tensors[f"blk.{i}.{theirs}.weight"]
            want = sd[f"layers.{i}.{ours}.weight"].numpy()
            assert t.tensor_type == gguf.GGMLQuantizationType.F32
            assert list(t.shape) == list(reversed(want.shape))  # ggml ne order: innermost first
            np.testing.assert_array_equal(np.asarray(t.data).reshape(want.shape), want)
        for ours, theirs, heads in (("q_proj", "attn_q", 4), ("k_proj", "attn_k", 2)):
            want = sd[f"layers.{i}.attn.{ours}.weight"]
            got = torch.from_numpy(np.asarray(tensors[f"blk.{i}.{theirs}.weight"].data).copy()).reshape(want.shape)
            torch.testing.assert_close(interleaved_to_half(got, head_dim=16), want, rtol=0, atol=0)  # inverted
            np.testing.assert_array_equal(got.numpy(), _meta_permute(want.numpy(), heads))  # llama.cpp's formula
            assert not torch.equal(got, want)
    np.testing.assert_array_equal(np.asarray(tensors["token_embd.weight"].data), sd["embed.weight"].numpy())
    np.testing.assert_array_equal(np.asarray(tensors["output_norm.weight"].data), sd["norm.weight"].numpy())


def test_permuted_projections_give_the_same_scores_under_interleaved_rope():
    """What the permutation is for: q.k with interleaved (adjacent-pair) RoPE on the permuted rows equals q.k with
    rotate-half RoPE on the original rows, for every pair of positions."""
    from mlcore.positional import RotaryEmbedding, apply_rotary

    D, C = 16, 32
    g = torch.Generator().manual_seed(0)
    wq, wk, x = torch.randn(D, C, generator=g), torch.randn(D, C, generator=g), torch.randn(6, C, generator=g)
    pos = torch.arange(6)[None]
    half, inter = RotaryEmbedding(D), RotaryEmbedding(D, interleaved=True)

    def scores(wq_, wk_, rope, interleaved):
        cos, sin = rope(pos)
        q = apply_rotary((x @ wq_.T)[None, None], cos, sin, interleaved=interleaved)
        k = apply_rotary((x @ wk_.T)[None, None], cos, sin, interleaved=interleaved)
        return q @ k.transpose(-1, -2)

    from mlcore.positional import half_to_interleaved

    ref = scores(wq, wk, half, False)
    got = scores(half_to_interleaved(wq), half_to_interleaved(wk), inter, True)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(scores(wq, wk, inter, True), ref, atol=1e-2)  # unpermuted: wrong


def test_untied_writes_output_and_interleaved_model_is_not_permuted(tmp_path, tokenizer):
    m = _model(tie=False, rope_interleaved=True)
    t = gguf_tensors(m)
    torch.testing.assert_close(t["output.weight"], m.lm_head.weight.detach(), rtol=0, atol=0)
    torch.testing.assert_close(t["blk.1.attn_q.weight"], m.layers[1].attn.q_proj.weight.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_half_types_round_like_torch(tmp_path, tokenizer, dtype):
    m = _model()
    r = gguf.GGUFReader(save_gguf(m, tmp_path / f"{dtype}.gguf", tokenizer=tokenizer, dtype=dtype))
    t = {x.name: x for x in r.tensors}
    w = m.layers[0].mlp.up_proj.weight.detach()
    tt = t["blk.0.ffn_up.weight"]
    want = w.to(torch.float16 if dtype == "f16" else torch.bfloat16).float()
    raw = np.asarray(tt.data)
    got = raw.astype(np.float32) if dtype == "f16" else (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(got.reshape(w.shape), want.numpy())
    assert t["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def _decode_q8_0(raw: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    blocks = raw.reshape(-1, 34)  # fp16 scale + 32 int8 codes
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    q = blocks[:, 2:].view(np.int8).astype(np.float32)
    return (d * q).reshape(shape), np.repeat(np.abs(d), 32, axis=1).reshape(shape)


def _decode_q4_0(raw: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    blocks = raw.reshape(-1, 18)  # fp16 scale + 16 bytes: low nibbles = weights 0..15, high = 16..31
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    nib = blocks[:, 2:]
    q = np.concatenate([nib & 0x0F, nib >> 4], axis=1).astype(np.float32) - 8
    return (d * q).reshape(shape), np.repeat(np.abs(d), 32, axis=1).reshape(shape)


@pytest.mark.parametrize("dtype", ["q8_0", "q4_0"])
def test_quantized_blocks_decode_to_the_weights(tmp_path, tokenizer, dtype):
    m = _model()
    r = gguf.GGUFReader(save_gguf(m, tmp_path / f"{dtype}.gguf", tokenizer=tokenizer, dtype=dtype))
    t = {x.name: x for x in r.tensors}
    qtype = getattr(gguf.GGMLQuantizationType, dtype.upper())
    decode, qmax, bound = (_decode_q8_0, 127, 0.5) if dtype == "q8_0" else (_decode_q4_0, 8, 1.0)
    for name, w in gguf_tensors(m).items():
        tt = t[name]
        if w.dim() == 1:
            assert tt.tensor_type == gguf.GGMLQuantizationType.F32
            continue
        assert tt.tensor_type == qtype and list(tt.shape) == list(reversed(w.shape)), name
        got, step = decode(np.asarray(tt.data), tuple(w.shape))
        err = np.abs(got - w.numpy())
        # half a step from rounding the code (a whole one for Q4_0, whose code +8 on the side opposite the absmax
        # clips to +7), plus the fp16 rounding of the scale times the largest code
        assert (err <= step * (bound + qmax * 2.0**-11) + 1e-7).all(), (name, float((err / step).max()))
        np.testing.assert_allclose(got, gguf.quants.dequantize(np.asarray(tt.data), qtype).reshape(w.shape))
    assert r.fields["general.file_type"].contents() == (7 if dtype == "q8_0" else 2)


def test_rows_not_divisible_by_32_fall_back_to_f16(tmp_path, tokenizer):
    m = _model(d_ff=48)  # ffn_down has 48 inputs: not a whole number of 32-weight blocks
    r = gguf.GGUFReader(save_gguf(m, tmp_path / "q.gguf", tokenizer=tokenizer, dtype="q8_0"))
    t = {x.name: x for x in r.tensors}
    assert t["blk.0.ffn_down.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert t["blk.0.ffn_up.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0


def test_tokenizer_metadata_matches_the_hf_tokenizers_export(tokenizer):
    tokenizers = pytest.importorskip("tokenizers")
    meta = tokenizer_metadata(tokenizer, 320)
    hf = tokenizers.Tokenizer.from_str(to_hf_json(tokenizer))
    vocab = hf.get_vocab()
    assert all(vocab[meta["tokens"][i]] == i for i in range(tokenizer.vocab_size))
    assert meta["tokens"][299] == "<|endoftext|>" and meta["token_types"][299] == 3  # CONTROL
    assert meta["tokens"][300:] == [f"[PAD{i}]" for i in range(300, 320)] and set(meta["token_types"][300:]) == {5}
    assert set(meta["token_types"][:299]) == {1}
    import json

    hf_merges = json.loads(to_hf_json(tokenizer))["model"]["merges"]
    assert meta["merges"] == [" ".join(p) if isinstance(p, list) else p for p in hf_merges]
    assert tokenizer_metadata(BPETokenizer.train(TEXT, 260, pattern=GPT2_PATTERN), 260)["pre"] == "gpt-2"


def test_bad_input(tmp_path, tokenizer):
    m = _model()
    with pytest.raises(ValueError, match="dtype must be one of"):
        save_gguf(m, tmp_path / "x.gguf", tokenizer=tokenizer, dtype="q4_K")
    with pytest.raises(ValueError, match="config.mlp must be 'swiglu'"):
        gguf_tensors(_model(mlp="gelu", activation="gelu"))
    with pytest.raises(ValueError, match="mlcore Transformer"):
        gguf_tensors(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="exceeds the model's vocab_size"):
        tokenizer_metadata(tokenizer, 200)
    with pytest.raises(ValueError, match="tokenizer.pattern must be"):
        tokenizer_metadata(BPETokenizer.train(TEXT, 260, pattern=r"\S+|\s+"), 260)
    with pytest.raises(ValueError, match="BPETokenizer"):
        tokenizer_metadata(object(), 260)
    from mlcore.quant import quantize_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize_model(_model(), "int8")
    with pytest.raises(ValueError, match="quantized layer"):
        gguf_tensors(q)
    assert set(GGUF_DTYPES) == {"f32", "f16", "bf16", "q8_0", "q4_0"}


def test_shipped_tokenizer_with_the_older_gpt4_spelling_exports() -> None:
    """The tiny models' tokenizer was saved with minbpe's GPT-4 spelling (before ``\\s++$``); it keeps its pattern
    and still maps to llama.cpp's "llama-bpe" pre-tokenizer."""
    from mlcore.tokenizer.patterns import GPT4_PATTERN_MINBPE
    from mlcore.training.assets import load_tiny_tokenizer

    tok = load_tiny_tokenizer()
    assert tok.pattern == GPT4_PATTERN_MINBPE
    assert tokenizer_metadata(tok, 4096)["pre"] == "llama-bpe"


def test_bad_name_and_non_finite_quantized_weights_are_refused(tmp_path, tokenizer):
    """name=5 failed deep in GGUFWriter (len of an int); a NaN weight written as q8_0 / q4_0 became arbitrary int
    codes with only a numpy RuntimeWarning. f32 keeps the NaN as it is (what the model holds)."""
    with pytest.raises(ValueError, match="name must be a str"):
        save_gguf(_model(), tmp_path / "n.gguf", tokenizer=tokenizer, name=5)
    m = _model()
    with torch.no_grad():
        m.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
    for dtype in ("q8_0", "q4_0"):
        with pytest.raises(ValueError, match=r"blk\.1\.ffn_up\.weight.*NaN or inf"):
            save_gguf(m, tmp_path / f"{dtype}.gguf", tokenizer=tokenizer, dtype=dtype)
    save_gguf(m, tmp_path / "f32.gguf", tokenizer=tokenizer, dtype="f32")


def test_a_sliding_window_no_layer_uses_exports(tmp_path, tokenizer):
    """layer_types with no sliding layer: the model attends to everything (to_hf writes no window either), so
    the LLAMA export takes it; it was refused for sliding_window != None."""
    m = _model(sliding_window=8, layer_types=["full_attention", "full_attention"])
    r = gguf.GGUFReader(save_gguf(m, tmp_path / "w.gguf", tokenizer=tokenizer))
    assert "llama.attention.sliding_window" not in r.fields
    with pytest.raises(ValueError, match="sliding_window must be None"):
        gguf_tensors(_model(sliding_window=8, layer_types=["full_attention", "sliding_attention"]))
