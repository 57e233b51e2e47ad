"""Latency figures: the pure summary against hand-computed NumPy, and timings recorded from generate."""

import numpy as np
import pytest
import torch

from mlcore.eval import RequestTiming, latency_summary, measure_generate
from mlcore.model import Transformer, TransformerConfig


def test_summary_hand_computed():
    records = [RequestTiming(0.0, [0.5, 0.6, 0.7]), RequestTiming(0.0, [1.0, 1.4]), RequestTiming(1.0, [1.2])]
    s = latency_summary(records)
    ttft = np.array([0.5, 1.0, 0.2])
    tpot = np.array([0.1, 0.4])  # the single-token request has no TPOT
    assert s["n_requests"] == 3 and s["output_tokens"] == 6
    for p in (50, 95, 99):
        assert s[f"ttft_p{p}"] == pytest.approx(np.percentile(ttft, p))
        assert s[f"tpot_p{p}"] == pytest.approx(np.percentile(tpot, p))
        assert s[f"e2e_p{p}"] == pytest.approx(np.percentile([0.7, 1.4, 0.2], p))
    assert s["tokens_per_s"] == pytest.approx(6 / 1.4)  # span: first start 0.0 to last token 1.4
    assert s["requests_per_s"] == pytest.approx(3 / 1.4)


def test_measure_generate_records_every_token():
    cfg = TransformerConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, max_seq_len=32)
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    prompts = [torch.randint(0, 64, (5,), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    for concurrency in (1, 2):
        timings = measure_generate(model, prompts, max_new_tokens=6, concurrency=concurrency)
        assert [len(t.token_times) for t in timings] == [6] * 4
        s = latency_summary(timings)
        assert s["output_tokens"] == 24 and s["ttft_p50"] > 0 and s["tpot_p50"] > 0 and s["tokens_per_s"] > 0
    # sequential requests queue: the last one submitted waits for the others, so its TTFT is the largest
    seq = measure_generate(model, prompts, max_new_tokens=6, concurrency=1)
    assert seq[-1].ttft > seq[0].ttft


def test_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        latency_summary([])
    with pytest.raises(ValueError, match="no token_times"):
        latency_summary([RequestTiming(0.0, [])])
    with pytest.raises(ValueError, match="NaN"):
        latency_summary([RequestTiming(0.0, [float("nan")])])
    with pytest.raises(ValueError, match="non-decreasing"):
        latency_summary([RequestTiming(1.0, [0.5])])
    cfg = TransformerConfig(vocab_size=16, d_model=16, n_layers=1, n_heads=2, max_seq_len=16)
    with pytest.raises(ValueError, match="concurrency"):
        measure_generate(Transformer(cfg), [torch.tensor([1, 2])], max_new_tokens=2, concurrency=0)


def test_malformed_records_and_percentiles_are_named():
    # each was an AttributeError / TypeError from deep inside, or numpy's "Percentiles must be in the range"
    ok = [RequestTiming(0.0, [0.5, 1.0, 2.0])]
    for records, message in (([{"start": 0.0, "token_times": [1.0]}], "records\\[0\\] must be a RequestTiming"),
                             (RequestTiming(0.0, [1.0]), "records must be a sequence"),
                             ([RequestTiming(None, [1.0])], "records\\[0\\] must hold a number start")):
        with pytest.raises(ValueError, match=message):
            latency_summary(records)
    for percentiles in (95, [101], [-1], ["50"], "50"):
        with pytest.raises(ValueError, match="percentiles must be a sequence of numbers in \\[0, 100\\]"):
            latency_summary(ok, percentiles=percentiles)
    got = latency_summary(ok, percentiles=np.array([50, 90.5]))
    assert got["tpot_p90.5"] == pytest.approx(np.percentile([0.75], 90.5))
    assert got["e2e_p50"] == pytest.approx(2.0)
    cfg = TransformerConfig(vocab_size=16, d_model=16, n_layers=1, n_heads=2, max_seq_len=16)
    with pytest.raises(ValueError, match="prompts\\[0\\] must be a tensor"):
        measure_generate(Transformer(cfg), [[1, 2, 3]], max_new_tokens=2)  # was AttributeError: no .dim()
