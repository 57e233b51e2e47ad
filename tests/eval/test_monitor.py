"""DriftMonitor: no alarm on a stable stream, one alarm after a shift (with callback), recovery, bad input,
and the demonstration stream (intent mix changing, a new product name appearing)."""

import numpy as np
import pytest

from mlcore.eval import DriftEvent, DriftMonitor, psi
from mlcore.eval.streams import intent_shift_stream


def _numeric_stream(n_before: int, n_after: int, shift: float, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    values = np.r_[rng.normal(size=n_before), rng.normal(shift, 1.0, size=n_after)]
    return [{"x": float(v)} for v in values]


def test_alert_after_shift_not_before_then_recovery():
    rng = np.random.default_rng(0)
    seen: list[DriftEvent] = []
    mon = DriftMonitor({"x": rng.normal(size=2000)}, window=200, min_samples=100, every=20, threshold=0.25,
                       callback=seen.append)
    assert mon.extend(_numeric_stream(600, 0, 0.0, 1)) == []  # stable: silent
    events = mon.extend(_numeric_stream(0, 400, 1.5, 2))
    assert [e.kind for e in events] == ["alert"] and seen == events  # one alert, not one per check
    assert 600 < events[0].n_seen <= 600 + 200 and events[0].value > 0.25
    events = mon.extend(_numeric_stream(400, 0, 0.0, 3))
    assert [e.kind for e in events] == ["recovered"]
    assert len(mon.series("x")) == len(mon.history) == (1400 - 100) // 20 + 1


def test_bad_input():
    with pytest.raises(ValueError, match="min_samples"):
        DriftMonitor({"x": [1.0] * 10}, window=100, min_samples=50)
    with pytest.raises(ValueError, match="exceeds window"):
        DriftMonitor({"x": [1.0] * 100}, window=10, min_samples=50)
    mon = DriftMonitor({"x": list(range(100)), "c": ["a"] * 100}, categorical=["c"], window=50, min_samples=20)
    with pytest.raises(ValueError, match="fewer than min_samples"):
        mon.check()
    with pytest.raises(ValueError, match="finite number"):
        mon.observe({"x": float("nan"), "c": "a"})
    with pytest.raises(ValueError, match="lacks features"):
        mon.observe({"x": 1.0})
    with pytest.raises(ValueError, match="None / NaN"):
        mon.observe({"x": 1.0, "c": None})
    assert mon.n_seen == 0  # rejected records are not counted
    with pytest.raises(ValueError, match="shifted_intent"):
        intent_shift_stream(10, 10, shifted_intent="mortgage")
    with pytest.raises(ValueError, match="share"):
        intent_shift_stream(10, 10, share=1.5)


def test_intent_mix_and_new_product_demo():
    stream = intent_shift_stream(300, 300, shifted_intent="fraud_report", share=0.5, new_product="Aurora card",
                                 pool_size=120, seed=0)
    ref = intent_shift_stream(300, 0, pool_size=120, seed=1)
    assert sum(r["intent"] == "fraud_report" for r in stream[300:]) > 100
    assert sum(r["mentions_product"] for r in stream[:300]) == 0
    assert sum(r["mentions_product"] for r in stream[300:]) > 50
    assert all("Aurora card" in r["text"] for r in stream if r["mentions_product"])
    mon = DriftMonitor({"intent": [r["intent"] for r in ref], "length": [r["length"] for r in ref]},
                       categorical=["intent"], window=150, min_samples=100, every=25, threshold=0.2)
    events = mon.extend({"intent": r["intent"], "length": r["length"]} for r in stream)
    intent_alerts = [e for e in events if e.feature == "intent" and e.kind == "alert"]
    assert len(intent_alerts) == 1 and intent_alerts[0].n_seen > 300


def test_numpy_reference_and_records_are_accepted_and_equal_psi():
    # a reference read from a NumPy int / float32 array was refused ("must be a finite number, got np.int64(0)")
    rng = np.random.default_rng(3)
    ref = rng.integers(0, 20, 500)
    cur = rng.integers(5, 25, 40)
    for values in (ref, ref.astype(np.float32)):
        mon = DriftMonitor({"x": values}, window=40, min_samples=40, every=40)
        mon.extend({"x": v} for v in cur.astype(values.dtype))
        assert mon.series("x") == [(40, pytest.approx(psi(ref, cur)))]


def test_bad_eps_threshold_and_reference_values_are_named_up_front():
    ref = {"c": ["a"] * 50 + ["b"] * 50}
    for eps in (0.0, -1.0, 2.0, "x"):  # 2.0 floored every share to 2: PSI 0, never an alert
        with pytest.raises(ValueError, match="eps must be a number in \\(0, 1\\)"):
            DriftMonitor(ref, categorical=["c"], eps=eps)
    with pytest.raises(ValueError, match="threshold must be a number > 0"):
        DriftMonitor(ref, categorical=["c"], threshold="0.2")
    with pytest.raises(ValueError, match="thresholds\\['c'\\] must be a number > 0"):
        DriftMonitor(ref, categorical=["c"], thresholds={"c": None})
    with pytest.raises(ValueError, match="categorical must be a collection"):
        DriftMonitor(ref, categorical="c")
    with pytest.raises(ValueError, match="reference\\['x'\\] must hold finite numbers"):
        DriftMonitor({"x": [1.0] * 60 + [float("nan")]}, window=50)  # was raised at the first check, mid-stream
    with pytest.raises(ValueError, match="reference\\['c'\\] holds a None / NaN category"):
        DriftMonitor({"c": ["a"] * 60 + [None]}, categorical=["c"], window=50)
