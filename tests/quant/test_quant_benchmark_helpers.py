"""The helpers of ``benchmarks/quant.py`` (``benchmarks/_quant_helpers.py``): held-out blocks reproduce the logged
perplexity, sizes match bitsandbytes' and the formulas, AWQ's folded scales come back out, timing statistics match
numpy's percentiles."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks import _quant_helpers as qh
from mlcore.model import Transformer, TransformerConfig
from mlcore.quant import QuantizedLinear, dequantize, quantize, quantize_model
from mlcore.quant.awq import awq_apply_scales, transformer_awq_mapping
from mlcore.quant.calibration import find_linears
from mlcore.quant.hf import quantize_like_bnb
from mlcore.training.assets import tiny_dir


def _tiny_model(seed: int = 0) -> Transformer:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cfg = TransformerConfig(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
        return Transformer(cfg).eval()


def test_time_calls_counts_runs_and_matches_numpy_quartiles(monkeypatch):
    clock = iter([0.0, 1.0, 1.0, 3.0, 3.0, 7.0, 7.0, 8.0, 8.0, 8.5])  # calls of 1, 2, 4, 1, 0.5 s
    monkeypatch.setattr(qh.time, "perf_counter", lambda: next(clock))
    calls = []
    t = qh.time_calls(lambda: calls.append(1), runs=5, warmup=2)
    durations = [1.0, 2.0, 4.0, 1.0, 0.5]
    q1, q3 = np.percentile(durations, [25, 75])
    assert len(calls) == 7 and t.runs == 5
    assert t.median == pytest.approx(float(np.median(durations)))
    assert t.iqr == pytest.approx(q3 - q1)


@pytest.mark.parametrize("kwargs", [{"runs": 0}, {"runs": 2.0}, {"warmup": -1}])
def test_time_calls_rejects_bad_counts(kwargs):
    with pytest.raises(ValueError, match="runs must be an int >= 1"):
        qh.time_calls(lambda: None, **kwargs)


def test_tensor_bytes_counts_a_tied_weight_once():
    model = _tiny_model()
    assert model.lm_head.weight is model.embed.weight
    expected = sum(p.numel() * p.element_size() for p in model.parameters())  # parameters() dedups tied ones
    expected += sum(b.numel() * b.element_size() for b in model.buffers())
    assert qh.tensor_bytes(model) == expected
    untied = sum(p.numel() * p.element_size() for _, p in model.named_parameters(remove_duplicate=False))
    assert qh.tensor_bytes(model) == expected < untied + sum(b.numel() * b.element_size() for b in model.buffers())


@pytest.mark.parametrize("scheme, options, bits", [
    ("int8", {}, 8 + 32 / 256),
    ("int4", {"group_size": 128}, 4 + (32 + 8) / 128),
    ("int4", {"group_size": 64}, 4 + (32 + 8) / 64),
    ("nf4", {"double_quant": False}, 4 + 32 / 64),
])
def test_layer_bits_follow_the_formats_formula(scheme, options, bits):
    layer = QuantizedLinear.from_linear(nn.Linear(256, 128, bias=False), scheme, **options)
    nbytes, numel = qh.layer_weight_bytes(layer)
    assert numel == 128 * 256 and 8 * nbytes / numel == pytest.approx(bits)


def test_model_bits_count_kept_float_layers_at_their_width():
    model = nn.Sequential(nn.Linear(256, 64, bias=False), nn.Linear(96, 256, bias=False))  # 96 % 64 != 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_model(model, "int4", group_size=64, skip=())
    assert isinstance(model[0], QuantizedLinear) and type(model[1]) is nn.Linear
    expected = (64 * 256 * (4 + 40 / 64) + 256 * 96 * 32) / (64 * 256 + 256 * 96)
    assert qh.linear_bits_per_parameter(model, ["0", "1"]) == pytest.approx(expected)
    with pytest.raises(ValueError, match="names"):
        qh.linear_bits_per_parameter(model, [])


@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_bits_equal_bitsandbytes_storage(double_quant):
    bnb_f = pytest.importorskip("bitsandbytes.functional")
    w = torch.randn(512, 256, generator=torch.Generator().manual_seed(3))
    packed, state = bnb_f.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=double_quant)
    ours = quantize(w, "nf4", blocksize=64, double_quant=double_quant).bits_per_parameter
    assert qh.bnb_4bit_bits(packed, state) == pytest.approx(ours)
    assert ours == pytest.approx(4 + 8 / 64 + 32 / (64 * 256) + 32 / w.numel() if double_quant else 4.5)


def test_weight_error_is_the_relative_frobenius_error_of_rtn():
    model = nn.Sequential(nn.Linear(64, 32, bias=False))
    original = qh.linear_weights(model, ["0"])
    quantize_model(model, "int8", skip=())
    w = original["0"]
    manual = float((w - dequantize(quantize(w, "int8"))).norm() / w.norm())
    assert qh.weight_error(original, model) == pytest.approx(manual, rel=1e-6)
    assert 0 < manual < 0.01


def test_awq_fold_factors_undo_the_folded_scales():
    model = _tiny_model(1)
    names = list(find_linears(model))
    original = qh.linear_weights(model, names)
    calib = [torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(4))]
    searches = awq_apply_scales(model, calib, group_size=32, n_grid=4)
    mapping, ties = transformer_awq_mapping(model)
    folds = qh.awq_fold_factors(mapping, ties, searches)
    moved = [n for n in names if not torch.allclose(model.get_submodule(n).weight, original[n])]
    assert moved, "AWQ folded no scale: the test would prove nothing"
    assert set(moved) <= set(folds)
    for n in names:
        torch.testing.assert_close(qh.unfold(model.get_submodule(n).weight.detach(), folds.get(n)), original[n],
                                   rtol=1e-5, atol=1e-6)
    assert qh.weight_error(original, model, folds) < 1e-5
    assert qh.weight_error(original, model) > 1e-3  # without undoing the scales the weights differ


def test_kernel_summary_names_the_path_each_layer_takes():
    model = _tiny_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_model(model, "int8")
    n = len(find_linears(_tiny_model()))
    assert qh.kernel_summary(model) == f"dequant x{n}, fp x1"  # fp32 activations: the fallback; tied head float
    model.to(torch.bfloat16)
    expected = "int8pack" if all(m.kernel == "int8pack" for m in model.modules() if isinstance(m, QuantizedLinear)) \
        else "dequant"
    assert qh.kernel_summary(model) == f"{expected} x{n}, fp x1"
    row_dots = "int8 row dots" if expected == "int8pack" else expected
    assert qh.kernel_summary(model, compiled_single_row=True) == f"{row_dots} x{n}, fp row dots x1"  # bf16 head
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mixed = quantize_like_bnb(_tiny_model(), "llm_int8")
    assert qh.kernel_summary(mixed) == f"llm.int8 x{n}, fp x1"


@pytest.mark.parametrize("kernel", ["row_dots", "library", "template"])
def test_kernel_summary_names_the_float_gemv_a_compiled_step_chose(kernel, monkeypatch):
    monkeypatch.setenv("MLCORE_CPU_GEMV", kernel)
    model = _tiny_model()  # float32, unquantized
    n = len(find_linears(model)) + 1  # and the head
    label = {"row_dots": "fp row dots", "library": "fp library GEMV", "template": "fp GEMM template"}[kernel]
    assert qh.kernel_summary(model, compiled_single_row=True) == f"{label} x{n}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_model(model, "int8")
    if kernel == "template":  # int8 row-dot layers keep the step unfrozen: the head runs row dots
        assert qh.kernel_summary(model, compiled_single_row=True).endswith("fp row dots x1")


def test_divisible_group_picks_the_largest_divisor():
    assert qh.divisible_group([256, 704]) == 64  # the tiny target: d_model 256, d_ff 704
    assert qh.divisible_group([512, 1408]) == 128  # the 27M config
    with pytest.raises(ValueError, match="in_features"):
        qh.divisible_group([100])


def test_summarize_profile_accounts_for_the_whole_step():
    ops = [("aten::mm", 0.004, 10), ("aten::add", 0.001, 5), ("aten::mul", 0.002, 3), ("aten::view", 0.0005, 20)]
    rows = qh.summarize_profile(ops, 0.010, top=2)
    assert [r[0] for r in rows[:2]] == ["aten::mm", "aten::mul"]
    assert rows[2] == ("other ops (2 kinds)", pytest.approx(0.0015), 25)
    assert rows[3][0].startswith("outside ops") and sum(r[1] for r in rows) == pytest.approx(0.010)
    with pytest.raises(ValueError, match="wall_s"):
        qh.summarize_profile(ops, 0.0)


@pytest.mark.skipif(not (tiny_dir() / "train_log.json").exists(), reason="tiny models not built")
def test_heldout_blocks_reproduce_the_logged_perplexity():
    from mlcore.training import evaluate, load_tiny
    from mlcore.training.assets import tiny_train_log

    log = tiny_train_log()
    model, tok = load_tiny("target")
    held = qh.heldout_blocks(tok, log)
    assert held.numel() == log["heldout_tokens"]
    ppl = evaluate(model, {"input_ids": held}, batch_size=8)["perplexity"]
    assert ppl == pytest.approx(log["target"]["heldout_perplexity"], rel=1e-3)
    calib = qh.calibration_blocks(tok, log, 3)
    assert calib.shape == (3, log["block_size"]) and torch.equal(calib, qh.calibration_blocks(tok, log, 3))
    assert not any(torch.equal(c, h) for c in calib for h in held)
    with pytest.raises(ValueError, match="n_blocks"):
        qh.calibration_blocks(tok, log, 0)
    assert math.isfinite(ppl)
