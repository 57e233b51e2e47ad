"""The benchmark harness measures what it says, and the suite survives bad input and failing topics."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from mlcore.bench import Plot, Result, describe_machine, peak_memory, roofline, run_suite, time_fn
from mlcore.bench.report import write_report

ROOT = Path(__file__).resolve().parents[2]


def test_time_fn_measures_a_known_sleep():
    t = time_fn(lambda: time.sleep(0.01), warmup=1, min_run_time=0.1)
    assert 0.009 < t.median < 0.03
    assert t.runs >= 5 and t.iqr >= 0


def test_time_fn_takes_several_measurements_even_when_one_call_fills_the_budget():
    # One 20 ms call exceeds min_run_time: the Timer alone would stop after a single block.
    t = time_fn(lambda: time.sleep(0.02), warmup=0, min_run_time=0.005)
    assert t.runs >= 5 and 0.019 < t.median < 0.06


def test_time_fn_rejects_bad_arguments():
    with pytest.raises(ValueError, match="min_run_time"):
        time_fn(lambda: None, min_run_time=0)


def test_peak_memory_counts_live_tensor_bytes():
    x = torch.randn(512, 512)
    assert peak_memory(lambda: x @ x) == 512 * 512 * 4  # exactly the output

    def two_live_then_one():
        a = torch.empty(1000, 1000)  # 4 MB
        b = torch.empty(500, 1000)  # 2 MB, both alive: 6 MB
        del a
        return b

    assert peak_memory(two_live_then_one) == 6_000_000


def test_peak_memory_rejects_unknown_device():
    with pytest.raises(ValueError, match="device"):
        peak_memory(lambda: None, device="meta")


def test_roofline_fractions():
    probe = describe_machine(torch.device("cpu"))
    probe.read_gbs, probe.matmul_flops = 100.0, {"float32": 1e12}
    out = roofline(seconds=0.5, flops=2e11, bytes_moved=10e9, probe=probe)
    assert out["gflops"] == pytest.approx(400.0)
    assert out["frac_peak_flops"] == pytest.approx(0.4)
    assert out["gbs"] == pytest.approx(20.0)
    assert out["frac_peak_bw"] == pytest.approx(0.2)
    assert out["intensity"] == pytest.approx(20.0)
    with pytest.raises(ValueError, match="seconds"):
        roofline(seconds=0, flops=1, probe=probe)


def test_result_ratio_is_mlcore_over_twin():
    r = Result("b", "x", {"T": 1}, "cpu", "float32", median=3.0, spread=0.1, twin="torch", twin_median=1.5)
    assert r.ratio == pytest.approx(2.0)


def test_describe_machine_reads_real_facts():
    probe = describe_machine(torch.device("cpu"))
    assert probe.cpu_count >= 1 and probe.torch_threads >= 1
    assert probe.torch_version == torch.__version__


def test_report_writer(tmp_path):
    probe = describe_machine(torch.device("cpu"))
    probe.read_gbs, probe.copy_gbs = 10.0, 8.0
    results = [
        Result("demo", "impl", {"impl": name, "T": T}, "cpu", "float32", T * k, 0.0, memory_bytes=T * 1024)
        for name, k in (("a", 1.0), ("b", 2.0))
        for T in (1, 2, 4)
    ]
    plots = {"demo": [Plot(name="time", x="T", series="impl")]}
    report = write_report(tmp_path, probe=probe, results=results, failures={"broken": "Traceback: boom"},
                          plots=plots, meta={"preset": "quick", "started": "now"})
    text = report.read_text()
    assert "## demo" in text and "## broken" in text and "FAILED" in text and "boom" in text
    assert (tmp_path / "demo_time.png").stat().st_size > 1000
    data = json.loads((tmp_path / "results.json").read_text())
    assert len(data["results"]) == 6 and "broken" in data["failures"]


@pytest.fixture()
def fake_suite(tmp_path, monkeypatch):
    pkg = tmp_path / "fakebench"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "good.py").write_text(textwrap.dedent("""
        from mlcore.bench import Result
        def run(ctx):
            yield Result("good", "x", {"n": 1}, str(ctx.device), None, 1.0, 0.0)
    """))
    (pkg / "bad.py").write_text("def run(ctx):\n    raise RuntimeError('deliberate failure')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.split(".")[0] == "fakebench"]:  # an earlier test's tmp_path
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr("mlcore.bench.suite.probe_machine", lambda dev, quick: describe_machine(dev))
    return tmp_path


def test_failing_topic_is_reported_and_others_run(fake_suite):
    out = run_suite(device="cpu", out=fake_suite / "reports", package="fakebench")
    data = json.loads((out / "results.json").read_text())
    assert [r["benchmark"] for r in data["results"]] == ["good"]
    assert "deliberate failure" in data["failures"]["bad"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)  # the quick probe reads 1 GiB buffers past a 480 MB L3: ~1 min


def test_cli_unknown_name_is_one_clear_line():
    proc = _cli("no_such_topic")
    assert proc.returncode == 2
    assert "unknown benchmark" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cli_cuda_without_gpu():
    proc = _cli("roofline", "--device", "cuda")
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_unwritable_out(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = _cli("roofline", "--out", str(blocker / "sub"))
    assert proc.returncode == 2 and "not writable" in proc.stderr and "Traceback" not in proc.stderr


def test_roofline_suite_end_to_end(tmp_path):
    proc = _cli("roofline", "--device", "cpu", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    (report_dir,) = list(tmp_path.iterdir())
    data = json.loads((report_dir / "results.json").read_text())
    assert data["probe"]["read_gbs"] > 0 and data["probe"]["matmul_flops"]["float32"] > 0
    matmul = [r for r in data["results"] if r["name"] == "torch.matmul"]
    # fractions only (no speed claims in tests): finite and positive, whatever the load on the machine
    assert matmul and all(0 < r["extra"]["frac_peak_flops"] < float("inf") for r in matmul)
    assert (report_dir / "roofline_matmul_gflops_vs_n.png").exists()


def test_time_fn_refuses_non_finite_min_run_time():
    for bad in (float("nan"), float("inf")):  # NaN passed "<= 0" and then never stopped measuring
        with pytest.raises(ValueError, match="min_run_time"):
            time_fn(lambda: None, min_run_time=bad)


def test_time_fn_and_peak_memory_refuse_devices_they_cannot_measure():
    for dev in ("meta", "mps"):  # was host-timed without a synchronize
        with pytest.raises(ValueError, match="'cpu' or 'cuda'"):
            time_fn(lambda: None, device=dev, min_run_time=0.01)
    if not torch.cuda.is_available():  # was a TypeError from deep inside torch.cuda
        for call in (lambda: time_fn(lambda: None, device="cuda"), lambda: peak_memory(lambda: None, device="cuda")):
            with pytest.raises(ValueError, match="no CUDA GPU"):
                call()


def test_roofline_refuses_nan_seconds_and_dtypes_without_a_ceiling():
    probe = describe_machine(torch.device("cpu"))
    probe.read_gbs, probe.matmul_flops = 10.0, {"float32": 1e11, "bfloat16": 4e11}
    with pytest.raises(ValueError, match="seconds"):
        roofline(seconds=float("nan"), flops=1e9, probe=probe)
    assert roofline(seconds=1.0, flops=1e11, probe=probe, dtype=torch.float32)["frac_peak_flops"] == 1.0
    for dtype in ("float16", "fp32"):  # was bfloat16's ceiling, silently
        with pytest.raises(ValueError, match=f"{dtype}.*probed: float32, bfloat16"):
            roofline(seconds=1.0, flops=1e9, probe=probe, dtype=dtype)


def test_topic_yielding_a_non_result_fails_alone(fake_suite):
    (fake_suite / "fakebench" / "notresult.py").write_text("def run(ctx):\n    yield {'name': 'oops'}\n")
    out = run_suite(["good", "notresult"], device="cpu", out=fake_suite / "reports", package="fakebench")
    data = json.loads((out / "results.json").read_text())
    assert [r["benchmark"] for r in data["results"]] == ["good"] and "not a Result" in data["failures"]["notresult"]
    assert "## notresult" in (out / "REPORT.md").read_text()


def test_cli_exits_1_when_a_topic_failed(fake_suite, monkeypatch, capsys):
    from benchmarks.__main__ import main

    monkeypatch.setattr("benchmarks.__main__.run_suite", lambda names, **kw: run_suite(names, **kw,
                                                                                       package="fakebench"))
    assert main(["good", "bad", "--device", "cpu", "--out", str(fake_suite / "reports")]) == 1
    assert "1 benchmark(s) failed: bad" in capsys.readouterr().err.splitlines()[-1]
    assert main(["good", "--device", "cpu", "--out", str(fake_suite / "reports")]) == 0


def test_time_fn_and_roofline_name_the_bad_argument():
    """Each was a TypeError from deep inside range(), "<", math.isfinite or torch.device, or a silent NaN."""
    f = lambda: None  # noqa: E731
    for kw, name in (({"warmup": 2.5}, "warmup"), ({"warmup": None}, "warmup"), ({"device": 0}, "device"),
                     ({"min_run_time": "0.1"}, "min_run_time"), ({"device": None}, "device")):
        with pytest.raises(TypeError, match=name):
            time_fn(f, **{"min_run_time": 0.01, **kw})
    with pytest.raises(ValueError, match="device"):
        time_fn(f, device="cpux", min_run_time=0.01)
    with pytest.raises(TypeError, match="fn"):
        time_fn(None, min_run_time=0.01)
    with pytest.raises(TypeError, match="fn"):
        peak_memory(None)
    probe = describe_machine(torch.device("cpu"))
    probe.read_gbs = 10.0
    for kw, err, name in (({"seconds": "1"}, TypeError, "seconds"), ({"bytes_moved": float("nan")}, ValueError,
                          "bytes_moved"), ({"bytes_moved": -1}, ValueError, "bytes_moved"),
                          ({"flops": float("inf")}, ValueError, "flops"), ({"dtype": 5}, ValueError, "dtype")):
        with pytest.raises(err, match=name):
            roofline(probe=probe, **{"seconds": 1.0, "bytes_moved": 1e9, **kw})
    assert roofline(seconds=0.5, probe=probe, bytes_moved=1e9)["gbs"] == pytest.approx(2.0)
