"""Report writer: ``results.json``, ``REPORT.md`` and PNG plots.

``results.json`` is strict JSON (RFC 8259): a figure that was not measured (NaN) or an unbounded one (an
infinite speed-up) is written as ``null``, since Python's ``NaN`` / ``Infinity`` tokens break other readers
(JavaScript's ``JSON.parse``, ``jq``, most non-Python parsers).

REPORT.md opens with a summary of every topic's headline figures against their goals (met / not met, with a
warning where the figure is noisy), then the machine and its probed ceilings, then one section per topic with
its narrow tables (see ``tables.py``) and plots.
"""

from __future__ import annotations

import json
import math
import traceback
from collections import defaultdict
from pathlib import Path
from typing import Any

from .probe import Probe
from .schema import MAX_REL_SPREAD, MIN_RUNS, Plot, Result, Table, as_number
from .tables import fmt, fmt_bytes, fmt_speedup, results_table, topic_tables

__all__ = ["draw_plot", "goal_rows", "probe_table", "results_table", "summary_table", "write_report"]

def probe_table(probe: Probe) -> str:
    rows = [
        ("device", f"{probe.device} ({probe.device_name})"),
        ("CPU", f"{probe.cpu_model}, {probe.cpu_count} logical cores"),
        ("caches", ", ".join(f"{k} {fmt_bytes(v)}" for k, v in probe.cache_bytes.items()) or "unknown"),
        ("torch", f"{probe.torch_version}, {probe.torch_threads} threads"),
        ("read bandwidth", f"{probe.read_gbs:.1f} GB/s"),
        ("copy bandwidth", f"{probe.copy_gbs:.1f} GB/s (read + write)"),
    ]
    rows += [(f"GEMV bandwidth {k}", f"{v:.1f} GB/s") for k, v in probe.gemv_gbs.items()]
    rows += [(f"matmul {k}", f"{v / 1e9:.1f} GFLOP/s") for k, v in probe.matmul_flops.items()]
    lines = ["| quantity | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


def goal_rows(results: list[Result]) -> list[dict[str, Any]]:
    """One row per goal of every result: topic, label, measured value, goal, met (None: not measured), flags."""
    rows = []
    for r in results:
        for goal in r.goals:
            value = goal.value_of(r)
            rows.append({"topic": r.benchmark, "label": goal.label, "value": value, "goal": goal,
                         "met": goal.met(value), "flags": r.flags_for(goal.metric), "result": r.name})
    return rows


def _goal_texts(value: float | None, op: str, target: float, speedup: bool) -> tuple[str, str]:
    """(measured, goal) cells. Where both round to the same text but differ (1.2496 against >= 1.25 printed as
    "1.25×" and "≥ 1.25×", not met), they get the fewest significant digits that tell them apart, so the
    status never contradicts what the row shows."""
    def show(x: float) -> str:
        return fmt_speedup(x) if speedup else fmt(float(x))

    measured, goal = (show(value) if value is not None else ""), show(target)
    if value is not None and math.isfinite(value) and value != target and measured == goal:
        for digits in range(4, 18):
            a, b = f"{value:.{digits}g}", f"{float(target):.{digits}g}"
            if a != b:
                measured, goal = (a + "×", b + "×") if speedup else (a, b)
                break
    sign = {">=": "≥", "<=": "≤"}.get(op, op)
    return measured, f"{sign} {goal}"


def summary_table(results: list[Result], topics: list[str], failures: dict[str, str]) -> list[str]:
    """The opening section: each topic's headline figures against their goals."""
    rows = sorted(goal_rows(results), key=lambda row: row["topic"])  # stable: a topic's goals in yield order
    lines = ["## Summary: headline figures against their goals", ""]
    if rows or failures:
        lines += ["| topic | figure | measured | goal | status |", "|---|---|---|---|---|"]
    for row in rows:
        goal = row["goal"]
        speedup = goal.metric.startswith("speedup")  # "speedup" or an extra such as "speedup_vs_naive"
        measured, goal_text = _goal_texts(row["value"], goal.op, goal.target, speedup)
        status = {True: "✅ met", False: "❌ not met", None: "— not measured"}[row["met"]]
        if row["flags"]:
            status += f" (⚠ {', '.join(row['flags'])})"
        label = row["label"].replace("|", "\\|")  # a bare "|" would split the Markdown cell
        lines.append(f"| {row['topic']} | {label} | {measured or '—'} | {goal_text} | {status} |")
    lines += [f"| {name} | whole topic | — | — | ❌ benchmark failed (see its section) |" for name in sorted(failures)]
    met = sum(row["met"] is True for row in rows)
    noisy = sum(bool(row["flags"]) for row in rows)
    lines += [""] if rows or failures else []
    if rows:
        lines += [f"{met} of {len(rows)} goals met" + (f"; {noisy} of them measured on noisy figures." if noisy
                                                        else "."), ""]
    without = sorted(set(topics) - {row["topic"] for row in rows} - set(failures))
    if without:
        lines += [f"No goals declared by: {', '.join(without)}.", ""]
    lines += ["**Speed-up** = how many times better mlcore is than its ecosystem twin measured in the same run "
              "(twin time / mlcore time, or mlcore rate / twin rate): above 1× mlcore is faster, below 1× slower. "
              "For quality figures (F2, bytes per token) the column reads *vs twin*, same direction. "
              f"**⚠** marks a figure from fewer than {MIN_RUNS} timed runs or with an interquartile range above "
              f"{MAX_REL_SPREAD:.0%} of its median (mlcore's or the twin's): treat it as indicative.", ""]
    return lines


def _y_value(result: Result, y: str) -> float | None:
    if y in ("median", "memory_bytes", "ratio", "spread"):
        return getattr(result, y)
    return result.extra.get(y)


def draw_plot(plot: Plot, results: list[Result], path: Path) -> bool:
    """Draw ``plot`` from ``results`` to ``path``; False when nothing matched."""
    # the object API (no pyplot): draws off-screen without touching the caller's backend
    from matplotlib.figure import Figure

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
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
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
    return True


def _json_default(value: Any) -> Any:
    """numpy scalars and 0-d tensors as numbers (null when not finite), anything else JSON cannot write as its
    text."""
    number = as_number(value)
    if number is None:
        return str(value)
    return number if math.isfinite(number) else None


def _finite_or_null(value: Any) -> Any:
    """``value`` with every NaN / infinite float inside dicts, lists and tuples replaced by None (JSON null)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    return value


def write_report(
    out_dir: Path,
    *,
    probe: Probe,
    results: list[Result],
    failures: dict[str, str],
    plots: dict[str, list[Plot]],
    meta: dict[str, Any],
    tables: dict[str, list[Table]] | None = None,
    descriptions: dict[str, str] | None = None,
) -> Path:
    """Write results.json, REPORT.md and the PNGs into ``out_dir``; returns the REPORT.md path.

    ``tables`` and ``descriptions`` are the topics' ``TABLES`` and ``DESCRIPTION`` (both optional).
    """
    tables, descriptions = tables or {}, descriptions or {}
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "meta": meta,
        "probe": probe.to_dict(),
        "results": [r.to_dict() for r in results],
        "failures": failures,
    }
    text = json.dumps(_finite_or_null(payload), indent=2, default=_json_default, allow_nan=False)
    (out_dir / "results.json").write_text(text)

    by_bench: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        by_bench[r.benchmark].append(r)
    topics = sorted(set(by_bench) | set(plots) | set(failures))
    md = [f"# mlcore benchmark report — preset `{meta.get('preset')}` on `{probe.device}`", "",
          f"Generated {meta.get('started')}. Every mlcore figure is compared with its ecosystem twin measured in "
          "the same run.", ""]
    md += summary_table(results, topics, failures)
    md += ["## Machine and probed ceilings", "", probe_table(probe), ""]
    for bench in topics:
        md += [f"## {bench}", ""] + ([descriptions[bench], ""] if descriptions.get(bench) else [])
        if bench in failures:
            md += ["**FAILED**", "", "```", failures[bench].strip()[-3000:], "```", ""]
        try:  # one topic's odd values cost its tables or plots, never the whole REPORT.md
            for table in topic_tables(by_bench.get(bench, []), tables.get(bench)):
                md += [table, ""]
            for plot in plots.get(bench, []):
                png = out_dir / f"{bench}_{plot.name}.png"
                if by_bench.get(bench) and draw_plot(plot, by_bench[bench], png):
                    md += [f"![{plot.title or plot.name}]({png.name})", ""]
        except Exception:  # noqa: BLE001 -- shown in the section, the figures stay in results.json
            md += ["**Tables or plots could not be drawn** (figures are in results.json):", "", "```",
                   traceback.format_exc(limit=-2).strip(), "```", ""]
    report = out_dir / "REPORT.md"
    report.write_text("\n".join(md))
    return report
