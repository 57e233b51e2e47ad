"""Speed-up direction, goals, noise flags and the narrow REPORT.md that opens with a goal summary."""

from __future__ import annotations

import json
import re
import time

import pytest
import torch

from mlcore.bench import Goal, Result, Table, describe_machine, time_fn
from mlcore.bench.report import goal_rows, write_report
from mlcore.bench.timing import Timing

OLD_KEYS = {"benchmark", "name", "params", "device", "dtype", "median", "spread", "unit", "memory_bytes", "twin",
            "twin_median", "ratio", "extra"}


def _r(name="x", median=1.0, **kw) -> Result:
    params = kw.pop("params", {"T": 1})
    return Result("demo", name, params, "cpu", "float32", median, kw.pop("spread", 0.0), **kw)


def test_speedup_is_above_one_when_mlcore_is_faster_in_both_directions():
    slow_time = _r(median=3.0, twin="ref", twin_median=1.5)  # seconds: mlcore takes twice as long
    assert slow_time.speedup == pytest.approx(0.5) and slow_time.ratio == pytest.approx(2.0)  # ratio unchanged
    fast_rate = _r(median=3.0, unit="MB/s", twin="ref", twin_median=1.5)  # MB/s: mlcore twice as fast
    assert fast_rate.speedup == pytest.approx(2.0) and fast_rate.better == "higher"
    assert _r(median=3.0, unit="ms/token", twin="ref", twin_median=6.0).speedup == pytest.approx(2.0)
    assert _r(median=1.0, unit="MiB", twin="ref", twin_median=4.0).speedup == pytest.approx(4.0)
    assert _r(median=0.0, twin="ref", twin_median=1.0).speedup is None  # undefined, not a ZeroDivisionError


def test_speedup_from_real_timings_of_known_sleeps():
    """Sleeping 10 ms (mlcore) against 20 ms (twin): about 2x faster as seconds and as a rate alike."""
    ours = time_fn(lambda: time.sleep(0.01), warmup=1, min_run_time=0.1)
    theirs = time_fn(lambda: time.sleep(0.02), warmup=1, min_run_time=0.1)
    as_time = Result.from_timing("demo", "x", {}, device="cpu", dtype=None, timing=ours, twin="t",
                                 twin_timing=theirs)
    as_rate = Result.from_timing("demo", "x", {}, device="cpu", dtype=None, timing=ours, twin="t",
                                 twin_timing=theirs, work=128, unit="tokens/s")
    assert 1.6 < as_time.speedup < 2.4 and as_time.speedup == pytest.approx(as_rate.speedup)
    assert as_rate.median == pytest.approx(128 / ours.median) and as_time.runs == ours.runs >= 3
    assert as_rate.spread == pytest.approx(128 * ours.iqr / ours.median**2)


def test_unknown_unit_with_a_twin_needs_a_direction():
    with pytest.raises(ValueError, match="better="):
        _r(unit="F2", twin="ref", twin_median=0.5)
    assert _r(unit="F2", twin="ref", twin_median=0.5, better="higher").speedup == pytest.approx(2.0)
    with pytest.raises(ValueError, match="better"):
        _r(better="faster")
    with pytest.raises(ValueError, match="unit"):
        Result.from_timing("d", "x", {}, device="cpu", dtype=None, timing=Timing(1, 0, 5), work=10)


def test_flags_for_few_runs_and_wide_spread():
    assert _r(runs=5, spread=0.05).flags == []
    assert _r(runs=1).flags == ["1 run"]
    assert _r(runs=10, spread=0.2).flags == ["IQR 20%"]
    assert _r(runs=10, twin="t", twin_median=2.0, twin_runs=2, twin_spread=0.5).flags == ["twin 2 runs",
                                                                                           "twin IQR 25%"]
    assert _r(spread=0.0, unit="F2").flags == []  # not a timing: never flagged for runs


def test_goals_evaluate_the_named_metric():
    r = _r(median=2.0, twin="t", twin_median=3.0, extra={"recall": 0.995},
           goal=[Goal(">=", 1.25, "speed-up"), Goal(">=", 0.99, "recall", metric="recall"),
                 Goal("<=", 1.0, "missing", metric="nope")])
    assert [g["met"] for g in r.to_dict()["goals"]] == [True, True, None]
    assert Goal("<", 1.4, "x").met(1.5) is False and Goal(">", 1.4, "x").met(float("nan")) is None
    single = _r(goal=Goal("<=", 2.0, "time", metric="median"))
    assert single.goals == (Goal("<=", 2.0, "time", metric="median"),)
    for bad in ({"op": "=>"}, {"target": "1.25"}, {"label": " "}):
        with pytest.raises(ValueError, match="Goal"):
            Goal(**{"op": ">=", "target": 1.0, "label": "x", **bad})
    with pytest.raises(ValueError, match="Result.goal"):
        _r(goal=">= 1.25")


def test_table_matching():
    r = _r(name="flash", params={"mode": "fwd", "T": 8})
    assert Table("", {"mode": "fwd", "name": ("flash", "naive")}).matches(r)
    assert not Table("", {"mode": "train"}).matches(r) and not Table("", {"task": "x"}).matches(r)


@pytest.fixture()
def report(tmp_path):
    probe = describe_machine(torch.device("cpu"))
    common = {"B": 1, "H": 8, "D": 64}
    results = [
        Result("attn", impl, {"impl": impl, "T": T, **common}, "cpu", "float32", T * k, T * k * spread,
               twin=None if impl == "sdpa" else "sdpa", twin_median=None if impl == "sdpa" else float(T),
               runs=runs, extra={"gflops": 1.0, "rarely_needed": 42},
               goal=Goal(">=", 1.25, f"flash vs sdpa at T={T}") if impl == "flash" and T == 4 else None)
        for impl, k, spread, runs in (("flash", 0.5, 0.01, 10), ("naive", 2.0, 0.3, 2), ("sdpa", 1.0, 0.0, 10))
        for T in (2, 4)
    ]
    results.append(Result("attn", "extra_thing", {"task": "misc"}, "cpu", None, 5.0, 0.0, unit="GB/s"))
    results.append(Result("qual", "f2", {"kind": "CARD"}, "cpu", None, 0.9, 0.0, unit="F2", better="higher",
                          twin="presidio", twin_median=0.95, extra={"recall": 0.9},
                          goal=Goal(">=", 0.99, "CARD recall", metric="recall")))
    results.append(Result("plain", "p", {"n": 1}, "cpu", None, 1.0, 0.0))
    tables = {"attn": [Table("times", where={"name": ("flash", "naive", "sdpa")}, columns=("gflops",))]}
    path = write_report(tmp_path, probe=probe, results=results, failures={"broken": "Traceback: boom"}, plots={},
                        meta={"preset": "quick", "started": "now"}, tables=tables,
                        descriptions={"attn": "attention, one line"})
    return path.read_text(), json.loads((tmp_path / "results.json").read_text())


def test_report_opens_with_the_goal_summary(report):
    text, _ = report
    sections = re.findall(r"^## (.+)$", text, flags=re.M)
    assert sections[0] == "Summary: headline figures against their goals"
    summary = text.split("\n## ")[1]
    assert "| attn | flash vs sdpa at T=4 | 2.00× | ≥ 1.25× | ✅ met |" in summary
    assert "| qual | CARD recall | 0.9 | ≥ 0.99 | ❌ not met |" in summary
    assert "| broken | whole topic | — | — | ❌ benchmark failed" in summary
    assert "1 of 2 goals met." in summary and "No goals declared by: plain." in summary


def test_tables_are_narrow_and_flag_noise(report):
    text, _ = report
    attn = text.split("## attn")[1].split("\n## ")[0]
    assert "attention, one line" in attn and "### times" in attn and "### Other results" in attn
    assert "All rows: B=1, H=8, D=64, dtype float32, twin: sdpa." in attn  # constants leave the columns
    header = next(line for line in attn.splitlines() if line.startswith("| name"))
    assert header == "| name | T | time | IQR | twin time | speed-up | gflops | note |"
    assert "rarely_needed" not in text and "task=misc" not in attn  # results.json only; titles say the filter
    assert "| naive | 4 | 8 s | 30% | 4 s | 0.50× | 1 | ⚠ 2 runs, IQR 30% |" in attn
    assert "| flash | 4 | 2 s | 1% | 4 s | 2.00× | 1 |  |" in attn
    qual = text.split("## qual")[1].split("\n## ")[0]
    assert "| name | F2 | twin F2 | vs twin |" in qual  # a quality ratio is not called a speed-up
    assert max(line.count("|") for line in text.splitlines() if line.startswith("|")) <= 12


def test_results_json_keeps_the_old_keys_and_adds_the_new(report):
    _, data = report
    rows = data["results"]
    assert all(OLD_KEYS <= set(r) for r in rows)
    naive4 = next(r for r in rows if r["name"] == "naive" and r["params"]["T"] == 4)
    assert naive4["ratio"] == pytest.approx(2.0) and naive4["speedup"] == pytest.approx(0.5)
    assert naive4["flags"] == ["2 runs", "IQR 30%"] and naive4["extra"]["rarely_needed"] == 42
    flash4 = next(r for r in rows if r["name"] == "flash" and r["params"]["T"] == 4)
    assert flash4["goals"] == [{"op": ">=", "target": 1.25, "label": "flash vs sdpa at T=4", "metric": "speedup",
                                "value": 2.0, "met": True}]


def test_goal_rows_count_each_goal_once():
    rows = goal_rows([_r(goal=[Goal(">=", 1, "a", metric="median"), Goal("<", 1, "b", metric="median")])])
    assert [(row["label"], row["met"]) for row in rows] == [("a", True), ("b", False)]


@pytest.mark.parametrize("params", [{"unit": "bytes"}, {"task": float("nan")}, {"mode": frozenset({"a"})},
                                    {"task": ["a", "b"]}])
def test_odd_params_do_not_cost_the_report(tmp_path, params):
    probe = describe_machine(torch.device("cpu"))
    results = [_r(params=params), _r("y", params={"task": "other"}, unit="MB/s")]
    report = write_report(tmp_path, probe=probe, results=results, failures={}, plots={}, meta={})
    text = report.read_text()  # was StopIteration / unhashable TypeError, REPORT.md never written
    assert "| x |" in text and "| y |" in text and (tmp_path / "results.json").exists()


def test_goal_carries_the_flags_of_the_figures_it_rests_on():
    fast = _r(median=0.05, spread=0.001, runs=20, twin="hf", twin_median=0.04, twin_runs=25, twin_spread=0.001,
              extra={"speedup_vs_naive": 24.0, "memory_vs_naive": 0.1}, extra_runs={"speedup_vs_naive": 1,
                                                                                      "memory_vs_naive": None},
              goal=[Goal(">=", 20, "vs naive", metric="speedup_vs_naive"), Goal("<=", 0.2, "mem", metric="memory_vs_naive")])
    rows = goal_rows([fast])
    assert rows[0]["flags"] == ["baseline 1 run"]  # the naive time was a single run: flagged
    noisy = _r(runs=10, spread=0.5, extra={"memory_vs_naive": 0.1}, extra_runs={"memory_vs_naive": None},
               goal=Goal("<=", 0.2, "mem", metric="memory_vs_naive"))
    assert goal_rows([noisy])[0]["flags"] == [] and noisy.flags == ["IQR 50%"]  # memory is not a timing
    assert _r(runs=10, spread=float("nan")).flags == ["IQR nan%"]


def test_numpy_and_tensor_figures_are_numbers(tmp_path):
    np = pytest.importorskip("numpy")
    for v in (np.float32(0.95), np.int64(1), torch.tensor(0.95)):
        r = _r(extra={"recall": v}, goal=Goal(">=", np.float32(0.9), "recall", metric="recall"))
        assert r.to_dict()["goals"][0]["met"] is True  # was None: "not measured"
    r = _r(median=np.float32(2.0), twin="t", twin_median=torch.tensor(1.0), extra={"recall": np.float32(0.5)})
    assert type(r.median) is float and type(r.twin_median) is float and r.speedup == 0.5
    write_report(tmp_path, probe=describe_machine(torch.device("cpu")), results=[r], failures={}, plots={}, meta={})
    assert json.loads((tmp_path / "results.json").read_text())["results"][0]["extra"]["recall"] == 0.5


def test_cosmetics():
    from mlcore.bench.tables import fmt, fmt_bytes

    assert fmt(9999.9) == "1.000e+04" and fmt(1234.5) == "1234"  # was "1e+04"
    assert fmt_bytes(2**20 - 1) == "1.0 MiB" and fmt_bytes(1023.6) == "1.0 KiB"  # was "1024.0 KiB"
    rows = [line for line in write_report_text(_r(goal=Goal(">=", 1.0, "a | b", metric="median"))) if "a \\| b" in line]
    assert rows and rows[0].count(" | ") == 4  # the label's "|" is escaped: still five cells


def write_report_text(result: Result) -> list[str]:
    from mlcore.bench.report import summary_table

    return summary_table([result], ["demo"], {})


def test_an_infinite_speedup_is_undefined_not_a_win():
    """A ~0 time (or an infinite rate) gave speedup inf, which the summary showed as "inf×  ✅ met"."""
    for r in (_r(median=5e-324, twin="t", twin_median=1.0),  # seconds: twin / ~0
              _r(median=float("inf"), unit="tokens/s", twin="t", twin_median=10.0),
              _r(median=1.0, twin="t", twin_median=float("inf"))):
        assert r.speedup is None
    assert _r(median=float("nan"), unit="tokens/s", twin="t", twin_median=1.0).speedup != 1.0  # NaN stays NaN
    assert Goal(">=", 1.25, "x").met(float("inf")) is None and Goal("<", 1, "x").met(-float("inf")) is None
    row = write_report_text(_r(median=1.0, extra={"speedup_x": float("inf")},
                               goal=Goal(">=", 2.0, "x", metric="speedup_x")))
    assert not [line for line in row if "✅" in line]


@pytest.mark.parametrize("value,op,shown,met", [(1.2496, ">=", "| 1.2496× | ≥ 1.25× | ❌ not met", False),
                                                (1.2504, ">", "| 1.2504× | > 1.25× | ✅ met", True),
                                                (1.25, ">=", "| 1.25× | ≥ 1.25× | ✅ met", True)])
def test_summary_shows_enough_digits_at_the_goal_boundary(value, op, shown, met):
    """1.2496 against >= 1.25 printed "1.25× | ≥ 1.25× | ❌ not met": the row contradicted itself."""
    r = _r(median=1.0, extra={"speedup_x": value}, goal=Goal(op, 1.25, "x", metric="speedup_x"))
    line = next(line for line in write_report_text(r) if line.startswith("| demo"))
    assert shown in line and goal_rows([r])[0]["met"] is met
    plain = _r(median=0.84996, goal=Goal(">=", 0.85, "frac", metric="median"))
    line = next(x for x in write_report_text(plain) if x.startswith("| demo"))
    assert "| 0.84996 | ≥ 0.85 | ❌ not met" in line


def test_rates_from_zero_or_bad_timings_are_refused_by_name():
    """Timing(0 s) raised a bare ZeroDivisionError; work=inf gave an inf rate; a string median was kept as text."""
    ok = Timing(1.0, 0.0, 5)
    for kw, name in (({"timing": Timing(0.0, 0.0, 5)}, "timing"),
                     ({"timing": ok, "twin": "t", "twin_timing": Timing(0.0, 0.0, 5)}, "twin_timing"),
                     ({"timing": Timing(float("nan"), 0.0, 5)}, "timing"),
                     ({"timing": ok, "work": float("inf")}, "work")):
        kw = {"work": 10, **kw}
        with pytest.raises(ValueError, match=name):
            Result.from_timing("d", "x", {}, device="cpu", dtype=None, unit="tokens/s", **kw)
    with pytest.raises(TypeError, match="timing"):
        Result.from_timing("d", "x", {}, device="cpu", dtype=None, timing=None)
    for kw, name in (({"median": "1.0"}, "median"), ({"twin": "t", "twin_median": "2"}, "twin_median"),
                     ({"runs": 2.5}, "runs"), ({"unit": None}, "unit")):
        with pytest.raises(TypeError, match=name):
            _r(**kw)
    with pytest.raises(ValueError, match="extra"):
        _r(extra=None)
    assert Result.from_timing("d", "x", {}, device="cpu", dtype=None, timing=Timing(0.0, 0.0, 5)).median == 0.0


def test_results_json_is_strict_json(tmp_path):
    """NaN / inf were written as Python's NaN / Infinity tokens, which JSON.parse, jq and RFC 8259 refuse."""
    np = pytest.importorskip("numpy")
    r = _r(median=float("nan"), extra={"speedup": float("inf"), "np": np.float64("nan"), "ok": 0.5,
                                       "runs": [1.0, float("-inf")]})
    write_report(tmp_path, probe=describe_machine(torch.device("cpu")), results=[r], failures={}, plots={}, meta={})

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    data = json.loads((tmp_path / "results.json").read_text(), parse_constant=refuse)
    row = data["results"][0]
    assert row["median"] is None and row["extra"] == {"speedup": None, "np": None, "ok": 0.5, "runs": [1.0, None]}
