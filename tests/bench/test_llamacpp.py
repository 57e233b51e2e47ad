"""llama.cpp anchor: the GGUF files mlcore writes run in llama.cpp (llama-cpp-python) and pass the benchmark's
correctness gate against mlcore's own float32 forward; a file with the RoPE permutation left out fails it.

Without ``llama_cpp`` (the optional ``[anchors]`` extra, ``make anchors``) only the argument checks run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlcore.bench.llamacpp import (
    ENABLE_HINT,
    LlamaCppRunner,
    correctness_gate,
    llama_cpp_missing,
    quantize_gguf,
)

needs_llama = pytest.mark.skipif(llama_cpp_missing() is not None, reason="llama_cpp not installed (make anchors)")
TEXT = ("The quick brown fox jumps over the lazy dog. " * 8 + "Tokens, merges and ranks: a byte-level BPE. " * 8
        + "def f(x):\n    return x + 1\n\n" * 6)


def test_missing_reason_says_how_to_enable():
    why = llama_cpp_missing()
    assert why is None or why.startswith(ENABLE_HINT)
    assert "make anchors" in ENABLE_HINT


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_threads"):
        LlamaCppRunner(tmp_path / "x.gguf", n_threads=0)
    with pytest.raises(ValueError, match="kv_type"):
        LlamaCppRunner(tmp_path / "x.gguf", kv_type="q8_0")
    with pytest.raises(ValueError, match="existing GGUF file"):
        LlamaCppRunner(tmp_path / "missing.gguf")
    with pytest.raises(ValueError, match="ftype"):
        quantize_gguf(tmp_path / "x.gguf", tmp_path / "y.gguf", "q3_X")
    with pytest.raises(ValueError, match="existing GGUF file"):
        quantize_gguf(tmp_path / "missing.gguf", tmp_path / "y.gguf", "q4_K_M")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("gguf")
    from mlcore.model import Transformer, TransformerConfig
    from mlcore.tokenizer import BPETokenizer

    tok = BPETokenizer.train(TEXT, 300, special_tokens=["<|endoftext|>"])
    g = torch.Generator().manual_seed(3)
    model = Transformer(TransformerConfig(vocab_size=320, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                          max_seq_len=128, rope_theta=10000.0)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.1) + (p.dim() == 1))
    prompt = tok.encode(TEXT[:120])[:24]
    with torch.inference_mode():
        ref_logits = model(torch.tensor([prompt]))[0, -1].numpy()
        from mlcore.inference import generate

        ref_tokens = generate(model, torch.tensor([prompt]), max_new_tokens=12)[0, len(prompt):].tolist()
    return model, tok, prompt, ref_logits, ref_tokens, tmp_path_factory.mktemp("gguf")


@needs_llama
def test_f32_file_passes_the_gate(tiny):
    from mlcore.model.gguf_export import save_gguf

    model, tok, prompt, ref_logits, ref_tokens, folder = tiny
    runner = LlamaCppRunner(save_gguf(model, folder / "f32.gguf", tokenizer=tok), n_threads=2, n_ctx=64,
                            kv_type="f32")
    report = correctness_gate(ref_logits, ref_tokens, runner, prompt, atol=1e-3, n_tokens=12)
    assert report.valid, report
    assert report.max_abs_diff < 1e-3 and report.tokens_equal == 12
    assert float(np.abs(ref_logits).max()) > 1.0  # the comparison is not between near-zero logits
    t = runner.timed_greedy(prompt, 6)
    assert t.tokens == ref_tokens[:6] and t.prefill_s > 0 and t.decode_s > 0
    # llama.cpp's own tokenizer, built from the exported vocabulary and merges, splits text as mlcore does
    sample = "The lazy dog jumps: return x + 1, over the quick brown fox."
    assert runner.tokenize(sample) == tok.encode(sample)
    with pytest.raises(ValueError, match="tokens must lie in"):
        runner.prefill([320])
    with pytest.raises(ValueError, match="exceed n_ctx"):
        runner.timed_greedy(prompt, 60)
    runner.close()


@needs_llama
def test_gate_fails_without_the_rope_permutation(tiny, monkeypatch):
    import mlcore.model.gguf_export as ex

    model, tok, prompt, ref_logits, ref_tokens, folder = tiny
    monkeypatch.setattr(ex, "half_to_interleaved", lambda w, **kw: w)  # the bug the permutation prevents
    runner = LlamaCppRunner(ex.save_gguf(model, folder / "unpermuted.gguf", tokenizer=tok), n_ctx=64,
                            kv_type="f32")
    report = correctness_gate(ref_logits, ref_tokens, runner, prompt, atol=1e-3, n_tokens=12)
    assert not report.valid and report.max_abs_diff > 1e-2 and "logit diff" in report.reason
    runner.close()


@needs_llama
@pytest.mark.parametrize("fmt", ["q8_0", "q4_K_M"])
def test_quantized_files_load_and_stay_close(tiny, fmt):
    from mlcore.model.gguf_export import save_gguf

    model, tok, prompt, ref_logits, ref_tokens, folder = tiny
    if fmt == "q8_0":
        path = save_gguf(model, folder / "q8_0.gguf", tokenizer=tok, dtype="q8_0")
    else:
        path = quantize_gguf(save_gguf(model, folder / "src.gguf", tokenizer=tok), folder / "q4k.gguf", fmt)
    runner = LlamaCppRunner(path, n_ctx=64)
    got = runner.prefill(prompt)
    corr = float(np.corrcoef(got, ref_logits)[0, 1])
    assert corr > (0.995 if fmt == "q8_0" else 0.95), corr
    runner.close()
