"""Report writer: ``results.json``, ``REPORT.md`` (one table per benchmark) and PNG plots."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from .probe import Probe
from .schema import Plot, Result


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value == 0:
            return "0"
        if abs(value) >= 1e4 or abs(value) < 1e-3:
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def probe_table(probe: Probe) -> str:
    rows = [
        ("device", f"{probe.device} ({probe.device_name})"),
        ("CPU", f"{probe.cpu_model}, {probe.cpu_count} logical cores"),
        ("caches", ", ".join(f"{k} {_fmt_bytes(v)}" for k, v in probe.cache_bytes.items()) or "unknown"),
        ("torch", f"{probe.torch_version}, {probe.torch_threads} threads"),
        ("read bandwidth", f"{probe.read_gbs:.1f} GB/s"),
        ("copy bandwidth", f"{probe.copy_gbs:.1f} GB/s (read + write)"),
    ]
    rows += [(f"GEMV bandwidth {k}", f"{v:.1f} GB/s") for k, v in probe.gemv_gbs.items()]
    rows += [(f"matmul {k}", f"{v / 1e9:.1f} GFLOP/s") for k, v in probe.matmul_flops.items()]
    lines = ["| quantity | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


def results_table(results: list[Result]) -> str:
    """One Markdown table; params and extra keys become columns in first-seen order."""
    param_keys: list[str] = []
    extra_keys: list[str] = []
    for r in results:
        param_keys += [k for k in r.params if k not in param_keys]
        extra_keys += [k for k in r.extra if k not in extra_keys]
    has_mem = any(r.memory_bytes is not None for r in results)
    has_twin = any(r.twin for r in results)
    header = ["name", *param_keys, "dtype", "median", "IQR", "unit"]
    header += ["peak mem"] if has_mem else []
    header += ["twin", "twin median", "ratio"] if has_twin else []
    header += extra_keys
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        row = [r.name, *(_fmt(r.params.get(k)) for k in param_keys), r.dtype or "", _fmt(r.median),
               _fmt(r.spread), r.unit]
        row += [_fmt_bytes(r.memory_bytes)] if has_mem else []
        row += [r.twin or "", _fmt(r.twin_median), _fmt(r.ratio)] if has_twin else []
        row += [_fmt(r.extra.get(k)) for k in extra_keys]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _y_value(result: Result, y: str) -> float | None:
    if y in ("median", "memory_bytes", "ratio", "spread"):
        return getattr(result, y)
    return result.extra.get(y)


def draw_plot(plot: Plot, results: list[Result], path: Path) -> bool:
    """Draw ``plot`` from ``results`` to ``path``; False when nothing matched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in results:
        if any(r.params.get(k) != v for k, v in plot.where.items()) or plot.x not in r.params:
            continue
        y = _y_value(r, plot.y)
        if y is None:
            continue
        label = r.params.get(plot.series, getattr(r, plot.series, None) or r.name)
        lines[str(label)].append((r.params[plot.x], y))
    if not lines:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, points in lines.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xlabel(plot.x)
    ax.set_ylabel(plot.ylabel or plot.y)
    ax.set_title(plot.title or plot.name)
    if plot.logx:
        ax.set_xscale("log", base=2)
    if plot.logy:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(
    out_dir: Path,
    *,
    probe: Probe,
    results: list[Result],
    failures: dict[str, str],
    plots: dict[str, list[Plot]],
    meta: dict[str, Any],
) -> Path:
    """Write results.json, REPORT.md and the PNGs into ``out_dir``; returns the REPORT.md path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "meta": meta,
        "probe": probe.to_dict(),
        "results": [r.to_dict() for r in results],
        "failures": failures,
    }
    (out_dir / "results.json").write_text(json.dumps(payload, indent=2, default=str))

    by_bench: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        by_bench[r.benchmark].append(r)
    md = [f"# mlcore benchmark report — preset `{meta.get('preset')}` on `{probe.device}`", "",
          f"Generated {meta.get('started')}; ratios compare mlcore with its ecosystem twin measured in the same run.",
          "", "## Machine and probed ceilings", "", probe_table(probe), ""]
    for bench in sorted(set(by_bench) | set(plots) | set(failures)):
        md += [f"## {bench}", ""]
        if bench in failures:
            md += ["**FAILED**", "", "```", failures[bench].strip()[-3000:], "```", ""]
        if by_bench.get(bench):
            md += [results_table(by_bench[bench]), ""]
        for plot in plots.get(bench, []):
            png = out_dir / f"{bench}_{plot.name}.png"
            if by_bench.get(bench) and draw_plot(plot, by_bench[bench], png):
                md += [f"![{plot.title or plot.name}]({png.name})", ""]
    report = out_dir / "REPORT.md"
    report.write_text("\n".join(md))
    return report
